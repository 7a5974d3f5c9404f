"""Deleting an expired build's images from a real docker-registry (distribution 2.8) started with
the local profile's own configuration (buildfarm.local.procs.registry_config: deletes enabled),
then its garbage collector: layers another repository still holds stay, the rest is freed.

The images are pushed through the registry's HTTP API (a config and one random layer each), so
the test needs no image builder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from buildfarm.backends.registry import RegistryClient
from buildfarm.model.errors import PermanentError

from registrykit import Registry, push_image, registry, running_registry

__all__ = ["registry"]  # the fixture, imported for this module's tests


def _blob_status(url: str, repository: str, digest: str) -> int:
    return httpx.head(f"{url}/v2/{repository}/blobs/{digest}", timeout=30).status_code


def test_delete_manifests_then_collect_garbage(registry: Registry) -> None:
    client = RegistryClient(registry.url, gc_config=registry.config)
    shared = os.urandom(300_000)  # a layer the next build's image reuses (copied, not pushed again)
    own = os.urandom(200_000)
    old = "proj/main/1/tool"
    kept = "proj/main/2/tool"
    expired = "proj/main/1/other"
    digest = push_image(registry.url, old, shared)
    assert client.copy_image(old, "latest", kept, "latest") == digest
    expired_digest = push_image(registry.url, expired, own)
    own_digest = "sha256:" + hashlib.sha256(own).hexdigest()

    assert client.delete_manifest(old, digest) is True
    assert client.delete_manifest(expired, expired_digest) is True
    assert client.delete_manifest(old, digest) is False  # idempotent
    assert not client.has_manifest(old, "latest")
    assert client.has_manifest(kept, "latest")

    freed = client.collect_garbage()

    assert freed is not None and freed >= len(own)
    assert freed < len(own) + len(shared)  # the shared layer is still referenced by build 2
    shared_digest = "sha256:" + hashlib.sha256(shared).hexdigest()
    assert _blob_status(registry.url, kept, shared_digest) == 200
    assert _blob_status(registry.url, expired, own_digest) == 404
    manifest, kept_digest, _ = client.manifest(kept, "latest")
    assert kept_digest == digest and manifest["layers"][0]["digest"] == shared_digest
    assert client.collect_garbage() == 0
    assert RegistryClient(registry.url).collect_garbage() is None  # no config here: the chart's CronJob


def test_delete_manifest_refused_without_deletes(tmp_path: Path) -> None:
    with running_registry(tmp_path / "registry", deletes=False) as server:
        url = server.url
        digest = push_image(url, "p/b/1/x", os.urandom(1000))
        with pytest.raises(PermanentError, match=r"storage\.delete\.enabled"):
            RegistryClient(url).delete_manifest("p/b/1/x", digest)
        with pytest.raises(PermanentError, match="not a manifest digest"):
            RegistryClient(url).delete_manifest("p/b/1/x", "latest")
