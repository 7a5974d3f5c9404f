"""buildfarm-step cross-builds as sbuild ``--host`` does: what it runs for ``--host-arch`` and
``--no-arch-all`` (the Kubernetes runner's cross steps), and what it runs without them; and what
the ``unshare`` runner's options change: no apt at all, apt refreshing the given sources alone,
dpkg-buildpackage without network.

The entrypoint's own ``build`` runs with its downloads and commands recorded instead of done
(the real build in a chroot is ``tests/integration/runners/test_builder_entrypoint.py``).
"""

from __future__ import annotations

from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

import pytest

ENTRYPOINT = Path(__file__).parents[3] / "buildtools" / "builder" / "buildfarm-step"
SHA = "0" * 64
REQUIRED = ["package", "--source-url", "http://s/src", "--source-sha256", SHA, "--upload-url", "http://s/up"]


def _download(_url: str, dest: Path) -> str:
    dest.write_bytes(b"source")
    return SHA


@pytest.fixture
def step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    loader = SourceFileLoader("buildfarm_step_cross", str(ENTRYPOINT))
    spec = spec_from_loader("buildfarm_step_cross", loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    monkeypatch.setattr(module, "SOURCES_FILE", tmp_path / "sources.list")
    monkeypatch.setattr(module, "download", _download)
    monkeypatch.setattr(module, "unpack_source", lambda _tarball, dest: dest.mkdir() and None)
    return module


def _build(step: ModuleType, workdir: Path, *options: str) -> list[tuple[list[str], dict[str, str]]]:
    ran: list[tuple[list[str], dict[str, str]]] = []

    def run(
        command: list[str], cwd: Path, _deadline: object, env: dict[str, str], *, isolated: bool = False
    ) -> None:
        ran.append((["(no network)", *command] if isolated else command, env))
        if command[0] == "dpkg-buildpackage":
            (cwd.parent / "tool_1.0_arm64.deb").write_bytes(b"deb")

    step.run = run
    args = step.parse([*REQUIRED, "--apt-source", "deb [trusted=yes] http://repo bookworm main", *options])
    workdir.mkdir()
    assert [p.name for p in step.build(args, workdir, step.Deadline(60))] == ["tool_1.0_arm64.deb"]
    return ran


def test_host_arch_cross_builds_as_sbuild_host_does(step: ModuleType, tmp_path: Path) -> None:
    ran = _build(step, tmp_path / "cross", "--host-arch", "arm64", "--no-arch-all")
    commands = [command for command, _env in ran]
    build_dep = next(c for c in commands if "build-dep" in c)
    assert build_dep[build_dep.index("-a") + 1] == "arm64"
    assert build_dep[build_dep.index("-P") + 1] == "cross,nocheck"
    assert commands[-1][:2] == ["dpkg-buildpackage", "-B"]  # the Architecture: all ones are not its
    # dpkg-buildpackage refuses a separate -P value ("unknown option or argument cross,nocheck")
    assert commands[-1][-2:] == ["--host-arch=arm64", "--build-profiles=cross,nocheck"]
    assert ran[-1][1]["DEB_BUILD_OPTIONS"] == "nocheck"

    # without them: for its own architecture, as before
    ran = _build(step, tmp_path / "native")
    assert ran[-1][0] == ["dpkg-buildpackage", "-b", "-uc", "-us"]
    assert "-a" not in next(c for c, _env in ran if "build-dep" in c)
    assert "DEB_BUILD_OPTIONS" not in ran[-1][1]

    # a value that is no architecture name never reaches a command line
    with pytest.raises(SystemExit):
        step.parse([*REQUIRED, "--host-arch", "arm64 --evil"])


def test_unshare_runner_options(step: ModuleType, tmp_path: Path) -> None:
    # the environment has every Build-Depends: no apt; the build without network
    ran = _build(step, tmp_path / "satisfied", "--no-build-deps", "--no-build-network")
    assert [c for c, _env in ran] == [["(no network)", "dpkg-buildpackage", "-b", "-uc", "-us"]]

    # the environment carries the mirror's lists: apt-get update refreshes the given source alone
    ran = _build(step, tmp_path / "given", "--update-given-only")
    update = next(c for c, _env in ran if "update" in c)
    assert f"Dir::Etc::SourceList={step.SOURCES_FILE}" in update and "Dir::Etc::SourceParts=-" in update
    assert (tmp_path / "sources.list").read_text() == "deb [trusted=yes] http://repo bookworm main\n"

    # a local source file instead of a URL (not both), and a local outputs file instead of an upload
    local = ["package", "--source-file", "/s.tar.gz", "--source-sha256", SHA, "--outputs-file", "/o.tar.gz"]
    args = step.parse(local)
    assert (args.source_file, args.source_url, args.outputs_file, args.upload_url) == (
        "/s.tar.gz",
        None,
        "/o.tar.gz",
        None,
    )
    with pytest.raises(SystemExit):
        step.parse([*REQUIRED, "--source-file", "/s.tar.gz"])
