"""A signed mirror as a build-dependency source of a real sbuild build (unshare mode).

The host's ``signed-by=`` path means nothing inside sbuild's chroot: the runner gives sbuild the
key with ``--extra-repository-key`` and the line without options, so apt in the chroot checks the
upstream's signature against that key only. The right key builds; a stranger's key fails the step
with apt's own signature error, and nothing is built.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.backends.upstream import upstream_source
from buildfarm.model.settings import load_settings
from buildfarm.model.sources import pack_tree
from buildfarm.runners.base import StepJob
from buildfarm.runners.sbuild import SbuildRunner, ensure_base_tarball

from debpkgs import build_deb, make_package
from test_mirrors import ARCH, COMPONENT, SigningKey, Upstream, _mirror

pytestmark = pytest.mark.sbuild


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> SbuildRunner:
    settings = load_settings(state_dir=tmp_path_factory.mktemp("unused"))
    ensure_base_tarball(settings.buildenv.tarball, settings.buildenv.distribution, settings.buildenv.mirror)
    return SbuildRunner(settings.buildenv.tarball, settings.buildenv.distribution)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, SigningKey]]:
    """A signed upstream holding ``sm-dep`` (served over HTTP), and a stranger's key."""
    import functools
    import http.server
    import threading

    top = Path(tempfile.mkdtemp(prefix="bf-gpg-"))  # short: gpg-agent's socket lives in the home
    root = tmp_path_factory.mktemp("signed-upstream")
    (root / "pool" / COMPONENT).mkdir(parents=True)
    gate = threading.Event()
    gate.set()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        key = SigningKey.make(top / "u", "sm upstream <sm@example.invalid>")
        stranger = SigningKey.make(top / "s", "stranger <x@example.invalid>")
        upstream = Upstream(root, f"http://127.0.0.1:{server.server_address[1]}", {}, key, gate)
        upstream.add(build_deb(tmp_path_factory.mktemp("debs"), "sm-dep", "1.0", architecture=ARCH))
        yield upstream, stranger
    finally:
        server.shutdown()
        server.server_close()
        for home in ("u", "s"):
            subprocess.run(["gpgconf", "--homedir", str(top / home), "--kill", "gpg-agent"], check=False)
        shutil.rmtree(top, ignore_errors=True)


def _job(tmp_path: Path, upstream: Upstream, key: Path, lines: list[str]) -> StepJob:
    src = tmp_path / "src"
    control = make_package(src, "sm-user") / "debian" / "control"
    # a hard Build-Depends (make_package's are alternatives that dpkg-dev satisfies)
    text = control.read_text().replace("Build-Depends: dpkg-dev", "Build-Depends: dpkg-dev, sm-dep")
    control.write_text(text)
    tarball = tmp_path / "source.tar.gz"
    tarball.write_bytes(pack_tree(src / "sm-user"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    source = upstream_source(_mirror(upstream, "signed", signed_by=key))
    assert source.signed_by == str(key)
    return StepJob(1, "sm-user", 1, tarball, workdir, [source], lines.append, timeout_seconds=600)


def test_signed_mirror_feeds_a_sbuild_build(
    runner: SbuildRunner, signed: tuple[Upstream, SigningKey], tmp_path: Path
) -> None:
    upstream, _ = signed
    lines: list[str] = []
    result = runner.run(_job(tmp_path, upstream, upstream.key.public, lines))
    assert result.ok, (result.error, lines[-30:])
    assert any(p.name.startswith("sm-user_1.0_") and p.name.endswith(".deb") for p in result.outputs)
    assert any("sm-dep" in line and "Unpacking" in line for line in lines), lines[-40:]


def test_wrong_key_fails_the_step_on_the_signature(
    runner: SbuildRunner, signed: tuple[Upstream, SigningKey], tmp_path: Path
) -> None:
    upstream, stranger = signed
    lines: list[str] = []
    result = runner.run(_job(tmp_path, upstream, stranger.public, lines))
    assert not result.ok and result.outputs == []
    assert any("NO_PUBKEY" in line or "not signed" in line for line in lines), lines[-40:]
