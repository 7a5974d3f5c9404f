"""A signed mirror as a build-dependency source of a real sbuild build (unshare mode).

The host's ``signed-by=`` path means nothing inside sbuild's chroot: the runner gives sbuild the
key with ``--extra-repository-key`` and the line without options, so apt in the chroot checks the
upstream's signature against that key only. The right key builds; a stranger's key fails the step
with apt's own signature error, and nothing is built.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.backends.upstream import upstream_source
from buildfarm.model.settings import load_settings
from buildfarm.model.sources import pack_tree
from buildfarm.runners.base import StepJob
from buildfarm.runners.sbuild import SbuildRunner, ensure_base_tarball

from debpkgs import build_deb, make_package
from mirrorkit import ARCH, SigningKey, Upstream, mirror_of, served_upstream, signing_keys

pytestmark = pytest.mark.sbuild


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> SbuildRunner:
    settings = load_settings(state_dir=tmp_path_factory.mktemp("unused"))
    ensure_base_tarball(settings.buildenv.tarball, settings.buildenv.distribution, settings.buildenv.mirror)
    return SbuildRunner(settings.buildenv.tarball, settings.buildenv.distribution)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, SigningKey]]:
    """A signed upstream holding ``sm-dep`` (served over HTTP), and a stranger's key."""
    with (
        signing_keys("sm upstream <sm@example.invalid>", "stranger <x@example.invalid>") as (key, stranger),
        served_upstream(tmp_path_factory.mktemp("signed-upstream"), key) as upstream,
    ):
        upstream.add(build_deb(tmp_path_factory.mktemp("debs"), "sm-dep", "1.0", architecture=ARCH))
        yield upstream, stranger


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
    source = upstream_source(mirror_of(upstream, "signed", signed_by=key))
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
