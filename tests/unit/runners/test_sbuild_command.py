"""The sbuild call of a step: a native step as before, a cross step with ``--host`` and, for
every step but a source's primary one, without the ``Architecture: all`` binaries."""

from __future__ import annotations

from pathlib import Path

from buildfarm.model.types import AptSource
from buildfarm.runners.sbuild import sbuild_command

ENV = Path("/cache/env.tar")


def _flags(command: list[str]) -> list[str]:
    return [c for c in command if c.startswith(("--host", "--arch-", "--no-arch-"))]


def test_native_step_builds_everything_for_the_node() -> None:
    assert _flags(sbuild_command(ENV, "bookworm", Path("out"), Path("p.dsc"))) == ["--arch-all", "--arch-any"]


def test_cross_step_builds_for_its_host_architecture_only() -> None:
    command = sbuild_command(ENV, "bookworm", Path("out"), Path("p.dsc"), host_arch="arm64", arch_all=False)
    assert _flags(command) == ["--host=arm64", "--no-arch-all", "--arch-any"]
    assert command[-1] == "p.dsc"


def test_step_whose_tarball_has_every_build_depends_runs_no_resolver() -> None:
    """sbuild's null resolver: no dummy package, no apt run, so no apt-get update either and no
    extra repository in the chroot (dpkg-buildpackage still checks the Build-Depends there)."""
    staging = AptSource("http://127.0.0.1:8080/repos/p/main/staging/", trusted=True)
    command = sbuild_command(ENV, "bookworm", Path("out"), Path("p.dsc"), [staging], install_deps=False)
    assert "--build-dep-resolver=null" in command and "--no-apt-update" in command
    assert not [c for c in command if c.startswith("--extra-repository")]
    with_apt = sbuild_command(ENV, "bookworm", Path("out"), Path("p.dsc"), [staging])
    assert not [c for c in with_apt if c.startswith("--build-dep-resolver")]
    assert f"--extra-repository={staging.line()}" in with_apt


def test_unmet_build_depends_in_the_chroot_explain_the_failure() -> None:
    """Without a resolver sbuild's own last word is "dpkg-buildpackage died": the step's error
    names what dpkg-checkbuilddeps found missing instead."""
    from buildfarm.runners.sbuild import _LogWatch

    seen: list[str] = []
    watch = _LogWatch(seen.append, [])
    for line in (
        "dpkg-checkbuilddeps: error: Unmet build dependencies: zlib1g-dev",
        "E: Build failure (dpkg-buildpackage died)",
    ):
        watch(line)
    assert len(seen) == 2
    assert watch.explain("sbuild exited with status 2") == (
        "sbuild exited with status 2: Unmet build dependencies: zlib1g-dev"
    )
