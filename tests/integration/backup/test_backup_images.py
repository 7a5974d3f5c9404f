"""Backups of release images, proven by a restore into a fresh, empty registry.

Two real docker-registries (distribution 2.8, tests/registrykit.py): the old farm's
and the restored farm's.  Images are pushed through the registry's HTTP API (a config and
gzipped layer tars made here), and the build rows are inserted directly, as an image step
records them (kind ``image``, the reference as filename, the manifest digest as sha256): no image builder
runs.  The farm is the local profile (SQLite, a directory store, the local apt repository) and
the backup target a directory.

History of the old farm: nightly 1 (image ``base``: its own layers), release 2 (image ``app``,
an OCI manifest of two layers, plus image ``base`` reused from nightly 1: the release takes the
nightly's image as its own), release 3 (``cli``, a Docker schema-2 manifest; ``multi``, an OCI
index of two platforms), nightly 4 (``app``: never backed up).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from buildfarm.backup import restore_backup, run_backup, verify_backup
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import PermanentError, ServiceUnavailableError
from buildfarm.model.images import image_destination, image_prefix, registry_host, split_reference
from buildfarm.model.types import OutputKind, StepKind
from buildfarm.state.models import Step, StepOutput
from buildfarm.wiring import Wiring

from farmkit import finished_build, make_test_context
from helpers import free_port
from registrykit import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Registry, push_blob, running_registry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT = ", ".join(
    (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json")
)


# -- pushing small real images through the registry API ------------------------------------------


@dataclass
class Pushed:
    """What was pushed: the manifest's bytes and every blob's bytes (config first), by digest."""

    reference: str
    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)
    children: dict[str, bytes] = field(default_factory=dict)  # an index's platform manifests

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.manifest).hexdigest()


def _layer(name: str, size: int) -> bytes:
    """A gzipped tar with one file of random bytes (random: every layer is distinct)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        data = os.urandom(size)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _put_manifest(url: str, repository: str, ref: str, body: bytes, media_type: str) -> None:
    put = httpx.put(
        f"{url}/v2/{repository}/manifests/{ref}",
        content=body,
        headers={"Content-Type": media_type},
        timeout=30,
    )
    assert put.status_code == 201, put.text


def _image_manifest(
    url: str, repository: str, layers: list[bytes], docker: bool, arch: str = "amd64"
) -> tuple[bytes, dict[str, bytes], str]:
    """Push config and layers; (manifest bytes, blobs by digest hex, media type)."""
    diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest() for layer in layers]
    config = json.dumps(
        {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    blobs: dict[str, bytes] = {}
    for data in (config, *layers):
        blobs[push_blob(url, repository, data).removeprefix("sha256:")] = data
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST

    def descriptor(data: bytes, kind: str) -> dict[str, object]:
        return {"mediaType": kind, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}

    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor(config, DOCKER_CONFIG if docker else OCI_CONFIG),
            "layers": [descriptor(layer, DOCKER_LAYER if docker else OCI_LAYER) for layer in layers],
        },
        indent=3,  # not the registry's own formatting: the digest is of these exact bytes
    ).encode()
    return body, blobs, media_type


def push_image(url: str, reference: str, layers: list[bytes], *, docker: bool = False) -> Pushed:
    _host, repository, tag = split_reference(reference)
    body, blobs, media_type = _image_manifest(url, repository, layers, docker)
    _put_manifest(url, repository, tag, body, media_type)
    return Pushed(reference, body, blobs)


def push_index(url: str, reference: str, platforms: dict[str, list[bytes]]) -> Pushed:
    """An OCI index of one image manifest per architecture (pushed by digest first)."""
    _host, repository, tag = split_reference(reference)
    pushed = Pushed(reference, b"")
    entries: list[dict[str, object]] = []
    for arch, layers in platforms.items():
        body, blobs, media_type = _image_manifest(url, repository, layers, False, arch)
        digest = hashlib.sha256(body).hexdigest()
        _put_manifest(url, repository, f"sha256:{digest}", body, media_type)
        pushed.blobs |= blobs
        pushed.children[digest] = body
        entries.append(
            {
                "mediaType": media_type,
                "digest": f"sha256:{digest}",
                "size": len(body),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    pushed.manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    _put_manifest(url, repository, tag, pushed.manifest, OCI_INDEX)
    return pushed


def get_manifest(url: str, repository: str, ref: str) -> httpx.Response:
    return httpx.get(f"{url}/v2/{repository}/manifests/{ref}", headers={"Accept": ACCEPT}, timeout=30)


def get_blob(url: str, repository: str, digest: str) -> bytes:
    response = httpx.get(f"{url}/v2/{repository}/blobs/sha256:{digest}", timeout=30, follow_redirects=True)
    assert response.status_code == 200, (repository, digest, response.status_code)
    return response.content


# -- build rows as image steps record them --------------------------------------------------------


def new_build(ctx: FarmContext, kind: str) -> int:
    now = dt.datetime.now(dt.UTC)
    with ctx.db.session() as session:
        build = finished_build(session, kind=kind, finished=now)
        return build.id


def reference_for(ctx: FarmContext, build_id: int, name: str) -> str:
    return image_destination(image_prefix(ctx.settings.registry.url, "proj", "main", build_id), name)


def image_step(
    ctx: FarmContext, build_id: int, name: str, pushed: Pushed | None, reused_from: int | None = None
) -> int:
    """An image step of the build: it pushed ``pushed``, or reused step ``reused_from``."""
    source = ctx.store.put_bytes(f"context of {name} in {build_id}".encode())
    with ctx.db.session() as session:
        step = Step(
            build_id=build_id,
            name=name,
            version="",
            origin="test",
            source_sha256=source.sha256,
            tree_hash="0" * 64,
            input_key=source.sha256,
            depends_on=[],
            state="succeeded",  # a reused step is a succeeded one with reused_from set
            reused_from=reused_from,
            attempt=1,
            kind=StepKind.IMAGE,
        )
        session.add(step)
        session.flush()
        if pushed is not None:
            session.add(
                StepOutput(
                    step_id=step.id,
                    attempt=1,
                    filename=pushed.reference,
                    kind=OutputKind.IMAGE,
                    sha256=pushed.digest,
                    size=sum(len(b) for b in pushed.blobs.values()),
                )
            )
        return step.id


# -- the farm -------------------------------------------------------------------------------------


@dataclass
class OldFarm:
    ctx: FarmContext
    registry: Registry
    backup: Path
    releases: list[int]
    nightlies: list[int]
    release_images: list[Pushed]  # app, base (reused from nightly 1), cli, multi
    nightly_only: Pushed  # nightly 4's app


@pytest.fixture
def old_farm(tmp_path: Path) -> Iterator[OldFarm]:
    with running_registry(tmp_path / "registry-old") as registry:
        backup = tmp_path / "backup"
        ctx = make_test_context(
            tmp_path / "old",
            f"sqlite:///{tmp_path / 'old.db'}",
            registry_url=registry.url,
            backup_target=str(backup),
        )
        url = registry.url
        nightly1 = new_build(ctx, "nightly")
        base = push_image(url, reference_for(ctx, nightly1, "base"), [_layer("base", 150_000)])
        base_step = image_step(ctx, nightly1, "base", base)
        release2 = new_build(ctx, "release")
        app = push_image(
            url, reference_for(ctx, release2, "app"), [_layer("a1", 120_000), _layer("a2", 80_000)]
        )
        image_step(ctx, release2, "app", app)
        image_step(ctx, release2, "base", None, reused_from=base_step)
        release3 = new_build(ctx, "release")
        cli = push_image(url, reference_for(ctx, release3, "cli"), [_layer("c", 50_000)], docker=True)
        image_step(ctx, release3, "cli", cli)
        multi = push_index(
            url,
            reference_for(ctx, release3, "multi"),
            {"amd64": [_layer("m-amd64", 40_000)], "arm64": [_layer("m-arm64", 30_000)]},
        )
        image_step(ctx, release3, "multi", multi)
        nightly4 = new_build(ctx, "nightly")
        nightly_app = push_image(url, reference_for(ctx, nightly4, "app"), [_layer("n", 60_000)])
        image_step(ctx, nightly4, "app", nightly_app)
        yield OldFarm(
            ctx,
            registry,
            backup,
            [release2, release3],
            [nightly1, nightly4],
            [app, base, cli, multi],
            nightly_app,
        )
        ctx.db.dispose()


def _target_object(backup: Path, sha256: str) -> Path:
    return backup / "objects" / "sha256" / sha256[:2] / sha256


def _target_manifest(backup: Path) -> dict[str, object]:
    manifest: dict[str, object] = json.loads((backup / "manifest.json").read_bytes())
    return manifest


def _catalogue(backup: Path) -> dict[str, object]:
    manifest = _target_manifest(backup)
    sha256 = manifest["catalogue"]["sha256"]  # type: ignore[index]
    catalogue: dict[str, object] = json.loads(_target_object(backup, sha256).read_bytes())
    return catalogue


# -- the tests ------------------------------------------------------------------------------------


def test_backup_copies_release_images_whole_and_incrementally(old_farm: OldFarm) -> None:
    first = run_backup(old_farm.ctx)

    assert first.builds == old_farm.releases
    assert first.images == 4
    assert first.copied_objects == first.objects > 0
    objects: dict[str, int] = _target_manifest(old_farm.backup)["objects"]  # type: ignore[assignment]
    for image in old_farm.release_images:
        for sha256, data in {image.digest: image.manifest, **image.children, **image.blobs}.items():
            assert _target_object(old_farm.backup, sha256).read_bytes() == data, image.reference
            assert objects[sha256] == len(data)
    for sha256 in {old_farm.nightly_only.digest, *old_farm.nightly_only.blobs}:
        assert sha256 not in objects and not _target_object(old_farm.backup, sha256).exists()

    images = {i["reference"]: i for i in _catalogue(old_farm.backup)["images"]}  # type: ignore[attr-defined]
    assert set(images) == {i.reference for i in old_farm.release_images}
    for image in old_farm.release_images:
        entry = images[image.reference]
        assert entry["manifest"] == image.digest
        assert set(entry["blobs"]) == set(image.blobs)
    assert images[old_farm.release_images[2].reference]["media_type"] == DOCKER_MANIFEST
    assert images[old_farm.release_images[3].reference]["media_type"] == OCI_INDEX

    again = run_backup(old_farm.ctx)
    assert (again.copied_objects, again.copied_bytes) == (0, 0)
    assert (again.objects, again.images, again.catalogue_sha256) == (first.objects, 4, first.catalogue_sha256)
    assert verify_backup(old_farm.ctx).ok


def test_verify_names_a_corrupted_layer_and_the_next_run_heals_it(
    old_farm: OldFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI, as an operator runs it on the local farm's machine."""
    from buildfarm_cli.main import app as cli

    settings = old_farm.ctx.settings
    monkeypatch.setenv("BUILDFARM_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("BUILDFARM_DATABASE_URL", settings.database.url)
    monkeypatch.setenv("BUILDFARM_BACKUP_TARGET", str(old_farm.backup))
    monkeypatch.setenv("BUILDFARM_REGISTRY_URL", old_farm.registry.url)
    monkeypatch.setenv("BUILDFARM_REPO_PORT", "1")
    monkeypatch.delenv("BUILDFARM_URL", raising=False)
    monkeypatch.delenv("BUILDFARM_REDIS_URL", raising=False)
    runner = CliRunner()
    ran = runner.invoke(cli, ["backup", "run"], env={"COLUMNS": "300"})
    assert ran.exit_code == 0, ran.output
    assert "2 release builds (4 images, 0 logs)" in ran.output
    app = old_farm.release_images[0]
    layer = list(app.blobs)[2]  # the second layer (after the config and the first layer)
    victim = _target_object(old_farm.backup, layer)
    victim.chmod(0o644)
    victim.write_bytes(b"bit rot")

    checked = runner.invoke(cli, ["backup", "verify"], env={"COLUMNS": "300"})

    assert checked.exit_code == 1
    assert checked.output.strip().splitlines()[-1] == (
        f"corrupt: {layer} (layer of image {app.reference}; "
        "moved aside, the next `backup run` copies it again)"
    )
    healed = run_backup(old_farm.ctx)
    assert (healed.copied_objects, healed.copied_bytes) == (1, len(app.blobs[layer]))
    assert verify_backup(old_farm.ctx).ok
    victim.write_bytes(b"bit rot again")
    config = next(iter(app.blobs))
    _target_object(old_farm.backup, config).unlink()
    again = verify_backup(old_farm.ctx)
    assert (again.corrupt, again.missing) == ([layer], [config])
    assert again.what == {
        layer: f"layer of image {app.reference}",
        config: f"config of image {app.reference}",
    }


def test_restore_into_an_empty_registry(old_farm: OldFarm, tmp_path: Path) -> None:
    run_backup(old_farm.ctx)
    with running_registry(tmp_path / "registry-new") as registry:
        assert httpx.get(f"{registry.url}/v2/_catalog", timeout=30).json()["repositories"] == []
        new = make_test_context(
            tmp_path / "new",
            f"sqlite:///{tmp_path / 'new.db'}",
            registry_url=registry.url,
            backup_target=str(old_farm.backup),
        )
        old_host, new_host = registry_host(old_farm.registry.url), registry_host(registry.url)
        assert old_host != new_host
        # A registry that does not answer stops the restore before any record goes in: run it again.
        down = f"http://127.0.0.1:{free_port()}"
        down_settings = new.settings.replace(registry_url=down)
        unreachable = dataclasses.replace(new, settings=down_settings, parts=Wiring(down_settings))
        with pytest.raises(ServiceUnavailableError, match="unreachable"):
            restore_backup(unreachable)
        assert control.page_builds(new, None, None, None, 10).items == []

        restored = restore_backup(new)

        assert restored.builds == old_farm.releases and restored.images == 4
        recorded = {
            o["filename"]: o["sha256"]
            for build in old_farm.releases
            for step in control.show_build(new, build).steps
            for o in step.outputs
        }
        assert recorded == {
            i.reference.replace(old_host, new_host, 1): i.digest for i in old_farm.release_images
        }
        for image in old_farm.release_images:
            _host, repository, tag = split_reference(image.reference.replace(old_host, new_host, 1))
            pulled = get_manifest(registry.url, repository, tag)
            assert pulled.status_code == 200, image.reference
            assert pulled.content == image.manifest
            assert pulled.headers["docker-content-digest"] == f"sha256:{image.digest}"
            for digest, body in image.children.items():
                assert get_manifest(registry.url, repository, f"sha256:{digest}").content == body
            for digest, data in image.blobs.items():
                assert get_blob(registry.url, repository, digest) == data
        nightly_repository = split_reference(old_farm.nightly_only.reference)[1]
        assert get_manifest(registry.url, nightly_repository, "latest").status_code == 404
        new.db.dispose()


def test_unsupported_manifest_is_one_clear_error(old_farm: OldFarm) -> None:
    """An index of indexes is not backed up: the run stops naming the image and the supported types,
    and the previous backup stays the newest."""
    run_backup(old_farm.ctx)
    before = (old_farm.backup / "manifest.json").read_bytes()
    url, ctx = old_farm.registry.url, old_farm.ctx
    build = new_build(ctx, "release")
    inner = push_index(url, reference_for(ctx, build, "nested"), {"amd64": [_layer("x", 1000)]})
    reference = reference_for(ctx, build, "nested")
    repository = split_reference(reference)[1]
    outer = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_INDEX, "digest": f"sha256:{inner.digest}", "size": len(inner.manifest)}
            ],
        }
    ).encode()
    _put_manifest(url, repository, f"sha256:{inner.digest}", inner.manifest, OCI_INDEX)
    _put_manifest(url, repository, "latest", outer, OCI_INDEX)
    image_step(ctx, build, "nested", Pushed(reference, outer, dict(inner.blobs)))

    with pytest.raises(PermanentError) as raised:
        run_backup(ctx)

    message = str(raised.value)
    assert reference in message and "index of indexes" in message
    assert OCI_MANIFEST in message and DOCKER_MANIFEST in message
    assert (old_farm.backup / "manifest.json").read_bytes() == before
