"""The environment cache: made once, found by digest, checked before use, rebuilt when corrupt.

The maker here writes a small real tarball whose bytes follow from the recipe (as mmdebstrap's
do with SOURCE_DATE_EPOCH), so what is tested is the cache's own logic: content addressing,
the digest check, atomic creation. mmdebstrap itself runs in tests/integration/test_environments_real.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from envkit import TarMaker

from buildfarm.environments import EnvironmentCache, EnvironmentGone, EnvironmentSpec, cross_spec
from buildfarm.environments.mmdebstrap import mirror_key_file, mmdebstrap_command
from buildfarm.model.planner import SourceInfo, compute_input_keys, make_plan
from buildfarm.runners.base import EnvironmentNotReady
from buildfarm.runners.sbuild import SbuildRunner

from helpers import wait_until

SPEC = EnvironmentSpec("bookworm", "amd64", "http://deb.debian.org/debian", ("debhelper", "fakeroot"))


@pytest.fixture
def maker() -> TarMaker:
    return TarMaker()


@pytest.fixture
def cache(tmp_path: Path, maker: TarMaker) -> EnvironmentCache:
    return EnvironmentCache(tmp_path / "environments", maker=maker)


def _keys(environment_id: str) -> dict[str, str]:
    """Input keys of a two-step plan (b Build-Depends on a) in ``environment_id``."""
    plan = make_plan(
        [
            ("a", SourceInfo(name="a", version="1", binaries=("liba",), build_depends=()), "tree-a"),
            ("b", SourceInfo(name="b", version="1", binaries=("b",), build_depends=("liba",)), "tree-b"),
        ],
        [],
        {},
    )
    compute_input_keys(plan, environment_id, {})
    return {n: s.input_key for n, s in plan.steps.items()}


def test_made_once_then_found_by_its_digest(cache: EnvironmentCache, maker: TarMaker) -> None:
    first = cache.ensure(SPEC)
    again = cache.ensure(SPEC)
    assert maker.calls == 1
    assert again.digest == first.digest and again.current
    assert first.path.name == f"{first.digest}.tar" and first.path.is_file()
    assert first.mirror_date.startswith("Sat, 01 Jan 2026")
    assert cache.get(first.digest).spec == SPEC
    assert [e.digest for e in cache.entries()] == [first.digest]


def test_refresh_unchanged_reuses_outputs_and_changed_rebuilds(
    cache: EnvironmentCache, maker: TarMaker
) -> None:
    runner = SbuildRunner(None, "bookworm", environments=cache, spec=SPEC)
    cache.ensure(SPEC)
    before = runner.environment_id()
    keys = _keys(before)
    cache.refresh(SPEC)  # the mirror did not move: same bytes, same identity, same keys
    assert maker.calls == 2
    assert runner.environment_id() == before
    assert _keys(runner.environment_id()) == keys

    maker.extra = " security update"  # the mirror moved on
    cache.refresh(SPEC)
    after = runner.environment_id()
    assert after != before
    new_keys = _keys(after)
    assert all(new_keys[n] != keys[n] for n in keys)  # nothing reused from the old environment

    bigger = SbuildRunner(
        None,
        "bookworm",
        environments=cache,
        spec=EnvironmentSpec("bookworm", "amd64", SPEC.mirror, (*SPEC.packages, "cmake")),
    )
    bigger.prepare_environment()
    assert bigger.environment_id() not in (before, after)  # a changed package set is a new recipe
    assert len(cache.entries()) == 3


def test_environment_id_never_makes_one_a_worker_does(cache: EnvironmentCache, maker: TarMaker) -> None:
    """It runs inside API requests: minutes of mmdebstrap there would hang the submit."""
    runner = SbuildRunner(None, "bookworm", environments=cache, spec=SPEC)
    with pytest.raises(EnvironmentNotReady, match="a worker is making it") as raised:
        runner.environment_id()
    assert maker.calls == 0 and raised.value.retry_after >= 60
    runner.prepare_environment()  # the worker's task
    assert maker.calls == 1 and runner.environment_id().endswith(cache.entries()[0].digest)
    with cache.entries()[0].path.open("r+b") as handle:  # found corrupt: removed, not made again here
        handle.truncate(100)
    with pytest.raises(EnvironmentNotReady):
        runner.environment_id()
    assert maker.calls == 1


def test_a_step_runs_in_the_environment_its_key_names(cache: EnvironmentCache, maker: TarMaker) -> None:
    runner = SbuildRunner(None, "bookworm", environments=cache, spec=SPEC)
    cache.ensure(SPEC)
    old = runner.environment_id()
    maker.extra = " moved"
    cache.refresh(SPEC)
    path, has_lists = runner.step_environment(old)
    assert path == cache.get(old.rsplit(":", 1)[1]).path and has_lists
    assert cache.prune() and not path.exists()  # not current, named by no build
    with pytest.raises(EnvironmentGone, match="no longer in"):
        runner.step_environment(old)


def test_a_cross_environment_is_the_native_recipe_plus_the_foreign_architecture(
    cache: EnvironmentCache, maker: TarMaker
) -> None:
    """Its own recipe and digest (part of cross steps' keys); the native recipe's key is what it
    was before cross environments existed, so native builds keep their environment."""
    cross = cross_spec(SPEC, "arm64")
    assert cross.foreign_architectures == ("arm64",)
    assert {"crossbuild-essential-arm64", "libc6-dev:arm64"} <= set(cross.packages)
    assert "foreign_architectures" not in SPEC.as_dict() and SPEC.key() == "cf9da1dddec1cff5"
    assert EnvironmentSpec.from_dict(cross.as_dict()) == cross and cross.key() != SPEC.key()
    command = mmdebstrap_command(cross, Path("/tmp/env.tar"))
    assert "--architectures=amd64,arm64" in command
    runner = SbuildRunner(None, "bookworm", environments=cache, spec=SPEC)
    cross_id = runner.cross_environment_id("arm64")
    runner.prepare_environment()  # environment_id() never makes one (it answers requests)
    assert cross_id != runner.environment_id() and maker.calls == 2
    path, _ = runner.step_environment(cross_id, "arm64")
    assert cache.get(cross_id.rsplit(":", 1)[1]).spec == cross and path.is_file()


def test_a_signed_mirror_is_fetched_with_its_key_and_the_chroot_names_it_at_its_signed_by_path() -> None:
    """The farm's signed package cache: mmdebstrap's apt reads the key from a host file, the
    chroot's sources say the recipe's path (the tarball does not depend on where it was made)."""
    signed = replace(
        SPEC, mirror="[signed-by=/etc/apt/keyrings/buildfarm.asc] http://pulp/c/", mirror_key="KEY"
    )
    assert signed.as_dict()["mirror_key"] == "KEY" and EnvironmentSpec.from_dict(signed.as_dict()) == signed
    assert "mirror_key" not in SPEC.as_dict() and signed.key() != replace(signed, mirror_key="OTHER").key()
    with mirror_key_file(signed) as key_file:
        assert key_file is not None and key_file.read_text() == "KEY"
        assert key_file.stat().st_mode & 0o777 == 0o644 and key_file.parent.stat().st_mode & 0o777 == 0o755
        command = mmdebstrap_command(signed, Path("/tmp/env.tar"), key_file=key_file)
    assert command[-1] == f"deb [signed-by={key_file}] http://pulp/c/ bookworm main"
    hook = next(arg for arg in command if "keyrings" in arg)
    assert hook.startswith("--customize-hook=") and f"'{key_file}'" in hook
    assert not key_file.exists()
    with mirror_key_file(SPEC) as none:
        assert none is None and mmdebstrap_command(SPEC, Path("/tmp/env.tar"))[-1].startswith("deb http")


def test_truncated_tarball_is_detected_removed_and_made_again(
    cache: EnvironmentCache, maker: TarMaker
) -> None:
    env = cache.ensure(SPEC)
    size = env.path.stat().st_size
    with env.path.open("r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(EnvironmentGone):
        cache.get(env.digest)
    assert not env.path.exists() and cache.entries() == []
    again = cache.ensure(SPEC)
    assert maker.calls == 2 and again.digest == env.digest and again.path.stat().st_size == size


def test_same_size_corruption_is_caught_by_the_digest(cache: EnvironmentCache) -> None:
    env = cache.ensure(SPEC)
    with env.path.open("r+b") as handle:
        handle.seek(600)
        handle.write(b"X")
    assert cache.current(SPEC) is None  # rehashed (size and mtime stamp changed), refused
    assert cache.ensure(SPEC).digest == env.digest


def test_maker_failure_leaves_nothing(tmp_path: Path) -> None:
    def failing(spec: EnvironmentSpec, dest: Path, proxy: str | None = None, progress: object = None) -> str:
        dest.write_bytes(b"half a tarball")
        raise RuntimeError("mirror went away")

    cache = EnvironmentCache(tmp_path / "environments", maker=failing)
    with pytest.raises(RuntimeError):
        cache.ensure(SPEC)
    assert sorted(p.name for p in cache.root.iterdir()) == [".lock"]


KILLED_MAKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from buildfarm.environments import EnvironmentCache, EnvironmentSpec

    def maker(spec, dest, proxy=None, progress=None):
        dest.write_bytes(b"\\0" * 4096)  # half written
        Path(sys.argv[2]).write_text("writing")
        time.sleep(600)  # killed here

    spec = EnvironmentSpec("bookworm", "amd64", "http://deb.debian.org/debian", ("debhelper", "fakeroot"))
    EnvironmentCache(Path(sys.argv[1]), maker=maker).ensure(spec)
    """
)


def test_killed_mid_creation_leaves_no_entry(
    cache: EnvironmentCache, maker: TarMaker, tmp_path: Path
) -> None:
    flag = tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", KILLED_MAKER, str(cache.root), str(flag)])
    try:
        wait_until(flag.exists, 60, "the maker to start writing")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    assert cache.entries() == [] and cache.current(SPEC) is None
    assert not list(cache.root.glob("*.tar")) and not list(cache.root.glob("current-*"))
    assert list(cache.root.glob(".new-*"))  # the dead maker's work, never read
    env = cache.ensure(SPEC)  # the next maker removes it and makes the entry
    assert maker.calls == 1 and not list(cache.root.glob(".new-*"))
    assert cache.get(env.digest).current


def test_prune_keeps_current_named_and_young(cache: EnvironmentCache, maker: TarMaker) -> None:
    old = cache.ensure(SPEC)
    maker.extra = "1"
    named = cache.refresh(SPEC)
    maker.extra = "2"
    current = cache.refresh(SPEC)
    assert cache.prune(keep={old.digest}, min_age_seconds=3600) == []  # all made just now
    removed = cache.prune(keep={old.digest})
    assert [e.digest for e in removed] == [named.digest]
    assert {e.digest for e in cache.entries()} == {old.digest, current.digest}


def test_recipe_key_ignores_package_order() -> None:
    again = EnvironmentSpec("bookworm", "amd64", SPEC.mirror, ("fakeroot", "debhelper", "fakeroot"))
    assert again.key() == SPEC.key() and again == SPEC
    assert EnvironmentSpec("trixie", "amd64", SPEC.mirror, SPEC.packages).key() != SPEC.key()


def _cli(cache_dir: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
    env |= {"BUILDFARM_STATE_DIR": str(state), "BUILDFARM_CACHE_DIR": str(cache_dir)}
    return subprocess.run(
        [sys.executable, "-m", "buildfarm_cli", "--output", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_cli_lists_and_prunes_this_machines_environments(tmp_path: Path, maker: TarMaker) -> None:
    import json

    cache = EnvironmentCache(tmp_path / "cache" / "environments", maker=maker)
    old = cache.ensure(SPEC)
    maker.extra = " moved"
    current = cache.refresh(SPEC)
    listed = json.loads(_cli(tmp_path / "cache", tmp_path / "state", "env", "list").stdout)
    assert [(e["digest"], e["current"]) for e in listed] == [(current.digest, True), (old.digest, False)]
    assert listed[0]["packages"] == ["debhelper", "fakeroot"] and listed[0]["size"] == current.size
    kept = json.loads(_cli(tmp_path / "cache", tmp_path / "state", "env", "prune").stdout)
    assert kept == []  # made just now: another farm's build may name it
    removed = json.loads(
        _cli(tmp_path / "cache", tmp_path / "state", "env", "prune", "--min-age-hours", "0").stdout
    )
    assert [e["digest"] for e in removed] == [old.digest]
    assert [e.digest for e in cache.entries()] == [current.digest]
