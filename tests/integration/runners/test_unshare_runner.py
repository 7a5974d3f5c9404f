"""The ``unshare`` runner for real: buildfarm-step in one user-namespace chroot of the farm's
builder environment (the recipe plus python3, made once per machine in the shared cache), with
real apt and dpkg-buildpackage.

hello-standalone builds with no apt run at all (the environment has its Build-Depends), in an
overlay on its tarball unpacked once and in a fresh unpack; greet-cli gets libgreet-dev, built by
the same runner just before, from a staging repository served over HTTP, as in a farm build, and
what apt installed stays in that step's overlay; a build sees a mapped root (not the host's) and
no network; a failing build gives one line; a cancelled one is killed whole and leaves no
directory behind.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.environments import LayerCache, LayerPolicy, builder_spec, cache_for, spec_for
from buildfarm.model.settings import load_settings
from buildfarm.model.sources import pack_tree
from buildfarm.model.types import AptSource
from buildfarm.runners.base import StepJob, StepResult, chroot_root
from buildfarm.runners.unshare import UnshareRunner

from debpkgs import make_package
from helpers import wait_for
from httpkit import serving

EXAMPLES = Path(__file__).parents[3] / "examples"
STEP_TIMEOUT = 900.0
"""A deadline, not a speed claim: greet-cli installs libgreet-dev with apt (load ~8 on 2 cores)."""
pytestmark = pytest.mark.sbuild


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnshareRunner]:
    """The runner as the farm wires it, in the machine's builder environment (made on first
    use, minutes), with dependency layers of its own and a chroot root of its own on tmpfs."""
    if subprocess.run(["id", "-u"], capture_output=True, text=True, check=True).stdout.strip() != "0":
        pytest.fail("these tests build as root on the host (the build's root is a subordinate id)")
    state = tmp_path_factory.mktemp("unshare-state")
    settings = load_settings(state_dir=state)
    environments = cache_for(settings)
    spec = builder_spec(spec_for(settings))
    environments.ensure(spec)
    layers = LayerPolicy(
        LayerCache(tmp_path_factory.mktemp("layers"), 8 << 30), tmp_path_factory.mktemp("views"), 1
    )
    tmpdir = chroot_root(settings.buildenv.sbuild_tmpdir, state)
    runner = UnshareRunner(
        None, settings.buildenv.distribution, tmpdir, environments=environments, spec=spec, layers=layers
    )
    yield runner
    assert _attempt_dirs(runner) == [], "an attempt left its chroot behind"
    assert runner.trees is not None
    runner.remove_tree(runner.trees.root)
    tmpdir.rmdir()


def _attempt_dirs(runner: UnshareRunner) -> list[Path]:
    assert runner.tmpdir is not None
    return [p for p in runner.tmpdir.iterdir() if p.name != "trees"] if runner.tmpdir.exists() else []


def _job(tmp_path: Path, tree: Path, lines: list[str], sources: tuple[AptSource, ...] = ()) -> StepJob:
    tarball = tmp_path / f"{tree.name}.tar.gz"
    tarball.write_bytes(pack_tree(tree))
    workdir = tmp_path / f"work-{tree.name}"
    workdir.mkdir()
    return StepJob(
        1, tree.name, 1, tarball, workdir, list(sources), lines.append, timeout_seconds=STEP_TIMEOUT
    )


def _field(deb: Path, name: str) -> str:
    done = subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _debs(result: StepResult, lines: list[str]) -> list[Path]:
    assert result.ok, (result.error, lines[-30:])
    return [p for p in result.outputs if p.name.endswith(".deb") and "-dbgsym_" not in p.name]


def _arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("overlay", [True, False], ids=["overlay", "unpacked"])
def test_builds_the_example_with_no_apt_run(runner: UnshareRunner, tmp_path: Path, overlay: bool) -> None:
    if not overlay:
        runner = UnshareRunner(
            None,
            runner.distribution,
            runner.tmpdir,
            environments=runner.environments,
            spec=runner.spec,
            layers=runner.layers,
            overlay=False,
        )
    lines: list[str] = []
    result = runner.run(_job(tmp_path, EXAMPLES / "hello-standalone", lines))
    (deb,) = _debs(result, lines)
    assert deb.name == f"hello-standalone_{_field(deb, 'Version')}_{_arch()}.deb"
    assert _field(deb, "Package") == "hello-standalone"
    assert _field(deb, "Architecture") == _arch()
    assert any(p.name.endswith(".buildinfo") for p in result.outputs)
    contents = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/hello-standalone" in contents
    # the environment has debhelper: the step ran without apt, in its environment's lean layer
    assert "buildfarm-step: the environment has every Build-Depends: no apt run" in lines
    assert not any("apt-get" in line for line in lines)
    assert result.layer is not None and result.layer.startswith("none:")
    assert runner.trees is None or len(runner.trees.trees()) == 1  # the lean layer, kept unpacked


def test_farm_built_dependency_comes_from_the_staging_repository(
    runner: UnshareRunner, tmp_path: Path
) -> None:
    lines: list[str] = []
    library = _debs(runner.run(_job(tmp_path, EXAMPLES / "libgreet", lines)), lines)
    staging = tmp_path / "staging"
    staging.mkdir()
    for deb in library:
        deb.rename(staging / deb.name)
    packages = subprocess.run(
        ["apt-ftparchive", "packages", "."], cwd=staging, capture_output=True, check=True
    )
    (staging / "Packages").write_bytes(packages.stdout)
    release = subprocess.run(["apt-ftparchive", "release", "."], cwd=staging, capture_output=True, check=True)
    (staging / "Release").write_bytes(release.stdout)
    with serving(staging) as repo:
        lines.clear()
        result = runner.run(_job(tmp_path, EXAMPLES / "greet-cli", lines, (AptSource(repo.url),)))
    (deb,) = _debs(result, lines)
    assert _field(deb, "Package") == "greet-cli"
    assert "libgreet" in _field(deb, "Depends")  # linked against the staged library
    assert any("libgreet-dev" in line and "Unpacking" in line for line in lines), lines[-40:]
    # apt refreshed the staging repository alone: the environment carries the mirror's lists
    assert any(line.startswith("buildfarm-step: $ apt-get") and "SourceParts=-" in line for line in lines)
    # what apt installed went into the step's overlay, not into the tree the next step starts from
    assert runner.trees is not None
    for tree in runner.trees.trees():
        assert "libgreet" not in (tree / "var/lib/dpkg/status").read_text()


def test_build_runs_as_a_mapped_root_without_network(runner: UnshareRunner, tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        probe = (
            "{ id -u; cat /proc/self/uid_map; perl -MIO::Socket::INET -e "
            f'\'print IO::Socket::INET->new(PeerAddr => "127.0.0.1:{port}", Timeout => 5) '
            '? "reached\\n" : "isolated\\n"\'; } > payload.txt'
        )
        tree = make_package(tmp_path / "src", "nsprobe", build=probe)
        lines: list[str] = []
        (deb,) = _debs(runner.run(_job(tmp_path, tree, lines)), lines)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing from the build reached the host's loopback
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "x")], check=True)
    uid, mapping, network = (tmp_path / "x/usr/share/doc/nsprobe/payload.txt").read_text().splitlines()
    assert uid == "0"  # root in the build...
    inside, outside, count = mapping.split()
    assert inside == "0" and outside != "0" and int(count) > 1  # ...is a subordinate id on the host
    assert network == "isolated"


def test_failing_build_gives_one_line(runner: UnshareRunner, tmp_path: Path) -> None:
    tree = make_package(tmp_path / "src", "nsfails", build="echo 'cannot build this' >&2; exit 3")
    lines: list[str] = []
    result = runner.run(_job(tmp_path, tree, lines))
    assert not result.ok and result.outputs == [] and result.killed_by is None
    assert result.error is not None and "\n" not in result.error
    assert result.error.startswith("dpkg-buildpackage exited with status 2"), result.error
    assert "cannot build this" in lines


def test_cancel_kills_the_namespace_and_leaves_no_directory(runner: UnshareRunner, tmp_path: Path) -> None:
    tree = make_package(tmp_path / "src", "nssleeps", build="echo nssleeps-started; sleep 617.25")
    lines: list[str] = []
    job = _job(tmp_path, tree, lines)
    results: list[StepResult] = []
    thread = threading.Thread(target=lambda: results.append(runner.run(job)))
    thread.start()
    try:
        wait_for(lambda: "nssleeps-started" in lines or None, STEP_TIMEOUT, "the build to start")
        assert _attempt_dirs(runner) != []  # its chroot, while it runs
    finally:
        job.cancel.set()
        thread.join(STEP_TIMEOUT)
    (result,) = results
    assert not result.ok and result.error == "buildfarm-step stopped: cancelled or lease lost"
    assert _attempt_dirs(runner) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "sleep 617.25" not in ps


def test_an_environment_without_python3_gives_one_line(runner: UnshareRunner, tmp_path: Path) -> None:
    """A fixed base tarball (setting ``base_tarball``) must carry the entrypoint's python3: the
    sbuild runner's environment does not."""
    settings = load_settings(state_dir=tmp_path / "unused", runner="sbuild")
    plain = cache_for(settings).ensure(spec_for(settings))  # what the sbuild runner builds in
    bare = UnshareRunner(plain.path, runner.distribution, runner.tmpdir, overlay=False)
    lines: list[str] = []
    result = bare.run(_job(tmp_path, make_package(tmp_path / "src", "nspy"), lines))
    assert not result.ok and result.outputs == []
    assert result.error == (
        "buildfarm-step exited with status 2: the environment has no python3 for buildfarm-step "
        "(the unshare runner's recipe adds it)"
    )


def test_cross_builds_for_arm64(runner: UnshareRunner, tmp_path: Path) -> None:
    """``buildfarm-step --host-arch`` in the cross environment of the runner's recipe (made once
    per machine, minutes): an AArch64 binary, as sbuild --host builds it."""
    lines: list[str] = []
    job = _job(tmp_path, EXAMPLES / "hello-standalone", lines)
    job.host_arch, job.arch_all = "arm64", False
    runner.cross_environment_id("arm64")  # made now if missing, as a submit does
    (deb,) = _debs(runner.run(job), lines)
    assert _field(deb, "Architecture") == "arm64"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "x")], check=True)
    header = (tmp_path / "x/usr/bin/hello-standalone").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
