"""A private docker-registry (Debian's distribution 2.8) for one test or module, and small real
images pushed through its HTTP API (no image builder needed).

Started the way the local farm starts its own (buildfarm.local.procs: own config bound to
127.0.0.1 on a free port, deletes enabled unless ``deletes=False``), stopped on exit.
``from registrykit import registry`` in a test module gives its tests a fresh one each.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from buildfarm.backends.registry import RegistryClient
from buildfarm.local.procs import registry_command, registry_config, registry_env
from buildfarm.model.errors import ServiceUnavailableError

from helpers import free_port, wait_until

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PUSH_TIMEOUT = 30.0
"""Seconds for one request of a push."""


@dataclass(frozen=True)
class Registry:
    url: str
    config: Path
    data: Path


def _answers(url: str) -> bool:
    try:
        RegistryClient(url).check()
    except ServiceUnavailableError:
        return False
    return True


@contextmanager
def running_registry(root: Path, *, deletes: bool = True) -> Iterator[Registry]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "config.yml"
    text = registry_config(root / "data", port)
    config.write_text(text if deletes else text.replace("enabled: true", "enabled: false"))
    with (root / "registry.log").open("wb") as log:
        proc = subprocess.Popen(
            registry_command(config), env=registry_env(dict(os.environ)), stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), 30, "docker-registry")
        yield Registry(url, config, root / "data")
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry of the test's own, deletes enabled."""
    with running_registry(tmp_path / "registry") as server:
        yield server


def push_blob(url: str, repository: str, data: bytes) -> str:
    """Upload one blob (a monolithic upload: POST then PUT with the digest); its ``sha256:`` digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = httpx.post(f"{url}/v2/{repository}/blobs/uploads/", timeout=PUSH_TIMEOUT)
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    location = location if location.startswith("http") else url + location
    target = httpx.URL(location).copy_merge_params({"digest": digest})  # keeps the upload's _state
    done = httpx.put(target, content=data, timeout=PUSH_TIMEOUT)
    assert done.status_code == 201, done.text
    return digest


def push_image(url: str, repository: str, layer: bytes, tag: str = "latest") -> str:
    """A one-layer OCI image (an amd64 config and ``layer``) as ``repository:tag``; its digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()

    def descriptor(media_type: str, data: bytes) -> dict[str, object]:
        return {"mediaType": media_type, "digest": push_blob(url, repository, data), "size": len(data)}

    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
        }
    ).encode()
    put = httpx.put(
        f"{url}/v2/{repository}/manifests/{tag}",
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=PUSH_TIMEOUT,
    )
    assert put.status_code == 201, put.text
    return "sha256:" + hashlib.sha256(body).hexdigest()
