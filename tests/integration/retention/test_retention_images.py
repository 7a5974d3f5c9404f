"""The retention sweep deletes an expired build's images from a real docker-registry, then its
garbage collection frees their layers; the kept build's image stays pullable.

Rows are inserted directly (an image step's output row has kind ``image``, the reference as its
filename and the manifest digest as its sha256); the images are pushed through the registry's
HTTP API (registrykit).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.backends.registry import RegistryClient
from buildfarm.engine.context import FarmContext
from buildfarm.model.images import image_destination, image_prefix, split_reference
from buildfarm.model.types import OutputKind, StepKind
from buildfarm.retention import run_sweep
from buildfarm.state.models import Step, StepOutput

from farmkit import finished_build, make_test_context
from registrykit import Registry, push_image, registry

__all__ = ["registry"]  # the fixture, imported for this module's tests


@pytest.fixture
def farm(tmp_path: Path, registry: Registry) -> Iterator[FarmContext]:
    ctx = make_test_context(
        tmp_path, f"sqlite:///{tmp_path / 'state.db'}", registry_url=registry.url, retention_keep_newest=1
    )
    # where `buildfarm start` writes the local registry's configuration: the sweep collects garbage
    (ctx.settings.state_dir / "registry").mkdir(parents=True)
    shutil.copy(registry.config, ctx.settings.state_dir / "registry" / "config.yml")
    yield ctx
    ctx.db.dispose()


def _image_build(ctx: FarmContext, days_ago: float, layer: bytes) -> tuple[int, str, str]:
    finished = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    source = ctx.store.put_bytes(layer + b" context")
    with ctx.db.session() as session:
        build = finished_build(session, kind="nightly", finished=finished)
        reference = image_destination(
            image_prefix(ctx.settings.registry.url, "proj", "main", build.id), "img"
        )
        _host, repository, _tag = split_reference(reference)
        digest = push_image(str(ctx.settings.registry.url), repository, layer)
        step = Step(
            build_id=build.id,
            name="img",
            version="",
            origin="test",
            source_sha256=source.sha256,
            tree_hash="0" * 64,
            input_key=source.sha256,
            depends_on=[],
            state="succeeded",
            attempt=1,
            kind=StepKind.IMAGE,
        )
        session.add(step)
        session.flush()
        session.add(
            StepOutput(
                step_id=step.id,
                attempt=1,
                filename=reference,
                kind=OutputKind.IMAGE,
                sha256=digest.removeprefix("sha256:"),
                size=len(layer),
            )
        )
        return build.id, repository, digest


def test_expired_image_is_deleted_and_its_layer_collected(farm: FarmContext, registry: Registry) -> None:
    old, old_repository, old_digest = _image_build(farm, 30, b"old layer " * 50_000)
    new, new_repository, new_digest = _image_build(farm, 1, b"new layer " * 50_000)
    client = RegistryClient(registry.url)
    assert client.has_manifest(old_repository, old_digest)

    dry = run_sweep(farm, dry_run=True)
    assert dry.build_ids == [old] and dry.images == 1
    assert client.has_manifest(old_repository, old_digest)

    report = run_sweep(farm, dry_run=False)
    assert report.build_ids == [old] and report.images == 1
    assert report.registry_bytes_freed is not None and report.registry_bytes_freed >= len(
        b"old layer " * 50_000
    )
    assert not client.has_manifest(old_repository, old_digest)
    assert client.has_manifest(new_repository, new_digest)
    assert client.image_size(new_repository, "latest") > len(b"new layer " * 50_000)
    assert new != old
