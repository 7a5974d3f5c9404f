"""Image steps end to end on real parts: a real docker-registry, real buildah (vfs, chroot),
a package built earlier in the same build installed into the image with apt from the build's
staging repository (served over HTTP on localhost), and the pushed image inspected through the
registry's HTTP API.

The Debian base image is made once per machine from the mmdebstrap base tarball (cached in
the cache dir, ~1 min the first time) and seeded into this session's registry (~2 s).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from buildfarm.backends.registry import RegistryClient
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.model.images import split_reference
from buildfarm.model.manifest import load_manifest
from buildfarm.model.types import OutputKind
from buildfarm.runners.sbuild import ensure_base_tarball
from buildfarm.state.models import Step, StepOutput

from debpkgs import make_package
from farmkit import dispatcher, drain, make_test_context
from helpers import free_port, wait_until
from registrykit import running_registry

TOOL_DOCKERFILE = """\
ARG BUILDFARM_REGISTRY
FROM ${BUILDFARM_REGISTRY}/debian:bookworm
ARG BUILDFARM_APT_SOURCE
ARG GREETING
# only the build's own repository: fast, and no Debian mirror needed
RUN echo "$BUILDFARM_APT_SOURCE" > /etc/apt/sources.list.d/build.list \\
 && apt-get update -o Dir::Etc::SourceList=/dev/null \\
 && apt-get install -y --no-install-recommends greet-tool \\
 && rm -rf /var/lib/apt/lists/* \\
 && echo "$GREETING" > /greeting
"""
DERIVED_DOCKERFILE = """\
ARG BUILDFARM_IMAGE_PREFIX
FROM ${{BUILDFARM_IMAGE_PREFIX}}/tool-image
RUN echo {text} > /derived
"""
MANIFEST = """\
project: Proj
branch: r/one
kind: nightly
packages:
  - path: greet-tool
images:
  - name: tool-image
    path: tool
    depends: [greet-tool]
    build_args: {GREETING: bonjour}
"""
DERIVED = """\
  - name: derived-image
    path: derived
    depends: [tool-image]
"""


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server.url


@pytest.fixture
def ctx(tmp_path: Path, registry_url: str) -> Iterator[FarmContext]:
    port = free_port()
    context = make_test_context(
        tmp_path, f"sqlite:///{tmp_path / 'state.db'}", repo_port=port, registry_url=registry_url
    )
    settings = context.settings
    ensure_base_tarball(settings.buildenv.tarball, settings.buildenv.distribution, settings.buildenv.mirror)
    repos = settings.state_dir / "repos"
    repos.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "buildfarm.backends.httpserve", "--root", str(repos), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _port_answers(port), 15, "repository server")
        yield context
    finally:
        server.terminate()
        server.wait(timeout=15)
        context.db.dispose()


def _port_answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tree(root: Path, derived: bool = False) -> Path:
    make_package(root, "greet-tool", payload="hello from greet-tool\n")
    (root / "tool").mkdir(exist_ok=True)
    (root / "tool" / "Dockerfile").write_text(TOOL_DOCKERFILE)
    (root / "derived").mkdir(exist_ok=True)
    (root / "derived" / "Dockerfile").write_text(DERIVED_DOCKERFILE.format(text="derived"))
    manifest = root / "buildfarm.yaml"
    manifest.write_text(MANIFEST + (DERIVED if derived else ""))
    return manifest


def _submit(ctx: FarmContext, manifest: Path) -> int:
    build_id = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    drain(ctx)
    return build_id


def _image_outputs(ctx: FarmContext, build_id: int) -> dict[str, tuple[str, str, int]]:
    """image name -> (reference, digest hex, size) as recorded for the build's image steps."""
    out: dict[str, tuple[str, str, int]] = {}
    with ctx.db.session() as session:
        steps = session.scalars(select(Step).where(Step.build_id == build_id, Step.kind == "image"))
        for step in steps:
            producer = step.reused_from or step.id
            (row,) = session.scalars(select(StepOutput).where(StepOutput.step_id == producer))
            assert row.kind == OutputKind.IMAGE
            out[step.name] = (row.filename, row.sha256, row.size)
    return out


def _files_in_image(registry_url: str, reference: str, tmp: Path, skip: set[str]) -> dict[str, bytes]:
    """Regular files of the image's layers (those not in ``skip``), read through the registry API."""
    _host, repository, ref = split_reference(reference)
    client = RegistryClient(registry_url)
    manifest, _digest, _type = client.manifest(repository, ref)
    files: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        if layer["digest"] in skip:
            continue
        blob = tmp / layer["digest"].replace(":", "-")
        client.fetch_blob(repository, layer["digest"], blob)
        with tarfile.open(blob, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    files[member.name.removeprefix("./")] = handle.read()
    return files


def _base_layers(registry_url: str) -> set[str]:
    manifest, _d, _t = RegistryClient(registry_url).manifest("debian", "bookworm")
    return {layer["digest"] for layer in manifest["layers"]}


def test_image_installs_package_built_in_same_build_then_reuse(
    ctx: FarmContext, tmp_path: Path, registry_url: str
) -> None:
    manifest = _tree(tmp_path / "src")
    first = _submit(ctx, manifest)
    view = control.show_build(ctx, first)
    assert view.state == "succeeded", [(s.name, s.state, s.error) for s in view.steps]
    images = _image_outputs(ctx, first)
    host = registry_url.removeprefix("http://")
    tool_ref, tool_digest, tool_size = images["tool-image"]
    # project "Proj" and branch "r/one" are escaped into registry path components
    assert tool_ref == f"{host}/x__50roj/r_2fone/{first}/tool-image:latest"
    client = RegistryClient(registry_url)
    _host, repository, _tag = split_reference(tool_ref)
    _manifest, digest, _type = client.manifest(repository, "latest")
    assert digest == "sha256:" + tool_digest
    assert tool_size == client.image_size(repository, digest) > 100_000_000  # the Debian base is in it

    base = _base_layers(registry_url)
    files = _files_in_image(registry_url, tool_ref, tmp_path, base)
    assert files["usr/share/doc/greet-tool/payload.txt"] == b"hello from greet-tool\n"
    status = files["var/lib/dpkg/status"].decode()
    assert "Package: greet-tool\nStatus: install ok installed" in status
    assert files["greeting"] == b"bonjour\n"  # a manifest build arg

    # The same manifest again: every step, image steps included, is reused; nothing runs.
    again = _submit(ctx, manifest)
    assert {s.state for s in control.show_build(ctx, again).steps} == {"reused"}
    assert _image_outputs(ctx, again) == images

    # A new image FROM ${BUILDFARM_IMAGE_PREFIX}/tool-image: the tool image is reused (it stays
    # under the first build's prefix) and copied into the new build's namespace before the build.
    manifest = _tree(tmp_path / "src", derived=True)
    third = _submit(ctx, manifest)
    states = {s.name: s.state for s in control.show_build(ctx, third).steps}
    assert states == {"greet-tool": "reused", "tool-image": "reused", "derived-image": "succeeded"}
    derived_ref = _image_outputs(ctx, third)["derived-image"][0]
    assert f"/{third}/derived-image:latest" in derived_ref
    files = _files_in_image(registry_url, derived_ref, tmp_path, base)
    assert files["derived"] == b"derived\n"
    _copied, copied_digest, _t = client.manifest(f"x__50roj/r_2fone/{third}/tool-image", "latest")
    assert copied_digest == "sha256:" + tool_digest


def test_failing_dockerfile_fails_the_step_and_keeps_latest(ctx: FarmContext, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "greet-tool")
    (src / "bad").mkdir()
    (src / "bad" / "Dockerfile").write_text(
        "ARG BUILDFARM_REGISTRY\nFROM ${BUILDFARM_REGISTRY}/debian:bookworm\n"
        "RUN echo about to fail && false\n"
    )
    manifest = src / "buildfarm.yaml"
    manifest.write_text("project: p\nbranch: main\nkind: nightly\npackages: [{path: greet-tool}]\n")
    good = _submit(ctx, manifest)
    assert control.show_build(ctx, good).state == "succeeded"
    latest = ctx.repo.sources("p", "main").line()

    manifest.write_text(manifest.read_text() + "images: [{name: bad, path: bad}]\n")
    failed = _submit(ctx, manifest)
    view = control.show_build(ctx, failed)
    assert view.state == "failed"
    step = next(s for s in view.steps if s.name == "bad")
    assert step.state == "failed"
    assert step.error is not None and step.error.startswith("buildah bud exited with status")
    assert "\n" not in step.error
    assert "step(s) failed: bad" in (view.error or "")
    with ctx.db.session() as session:
        log_key = session.get_one(Step, step.id).log_key
    assert log_key is not None
    text, _offset = ctx.store.read_log(log_key)
    assert b"about to fail" in text  # the build's own output is in the step log
    assert ctx.repo.sources("p", "main").line() == latest  # latest was not moved
    assert dispatcher(ctx).runs == []


def test_image_steps_recorded_on_both_databases(tmp_path: Path, database_url: str) -> None:
    """Step kind and image spec survive the database round trip (SQLite and PostgreSQL)."""
    context = make_test_context(tmp_path, database_url, registry_url="http://127.0.0.1:1")
    try:
        manifest = _tree(tmp_path / "src", derived=True)
        build_id = submit_build(context, load_manifest(manifest), manifest.parent, "alice")
        with context.db.session() as session:
            steps = {s.name: s for s in session.scalars(select(Step).where(Step.build_id == build_id))}
            assert steps["greet-tool"].kind == "package" and steps["greet-tool"].image_spec is None
            assert steps["tool-image"].kind == "image"
            assert steps["tool-image"].image_spec == {
                "dockerfile": "Dockerfile",
                "builder": "kaniko",
                "build_args": {"GREETING": "bonjour"},
            }
            assert steps["tool-image"].depends_on == ["greet-tool"]
            assert steps["derived-image"].depends_on == ["tool-image"]
            keys = {n: s.input_key for n, s in steps.items()}
        assert len(set(keys.values())) == 3
    finally:
        context.db.dispose()
