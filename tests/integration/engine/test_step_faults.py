"""Steps under real faults (host runner, SQLite: the database is not the point here).

* a builder killed by the system (``kill -9`` of dpkg-buildpackage only) is built again on a new
  attempt, with the reason recorded, instead of failing a package that was fine (~4 s);
* a log store that refuses every line fails the attempt in one line, and its writer is closed (~1 s);
* the reaper removes dead attempts' work directories and sbuild chroots, and only those: not a
  live attempt's, not one a process still works in (~1 s).
"""

from __future__ import annotations

import errno
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from buildfarm.engine import control
from buildfarm.engine.advance import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.reaper import sweep_dead_attempts
from buildfarm.engine.steps import KILLED_ATTEMPTS_MAX, claim_step, run_step
from buildfarm.engine.submit import submit_build
from buildfarm.model.manifest import load_manifest
from buildfarm.runners.base import chroot_root
from buildfarm.state.models import Step

from debpkgs import make_package, write_manifest
from farmkit import dispatcher, drain, make_test_context
from helpers import wait_until


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[FarmContext]:
    context = make_test_context(
        tmp_path, f"sqlite:///{tmp_path / 'state.db'}", sbuild_tmpdir=tmp_path / "shm"
    )
    yield context
    context.db.dispose()


def _submit(ctx: FarmContext, src: Path, name: str) -> int:
    build_id = submit_build(ctx, load_manifest(write_manifest(src, [name])), src, "alice")
    advance_build(ctx, dispatcher(ctx).advances.pop())
    return build_id


def _builder_pid(work_root: Path) -> int | None:
    """The dpkg-buildpackage working under ``work_root`` (the guard's child), if it runs."""
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = (entry / "cwd").readlink()
        except OSError:
            continue
        if any(arg.endswith(b"/dpkg-buildpackage") for arg in cmdline[:2]) and work_root in cwd.parents:
            return int(entry.name)
    return None


def test_builder_killed_by_the_system_is_built_again(ctx: FarmContext, tmp_path: Path) -> None:
    src, started, again = tmp_path / "src", tmp_path / "started", tmp_path / "second-attempt"
    # the first attempt waits to be killed; the second one (the marker exists then) builds
    make_package(src, "victim", build=f"if [ ! -e {again} ]; then touch {again} {started}; sleep 60; fi")
    build_id = _submit(ctx, src, "victim")
    ((step_id, _),) = dispatcher(ctx).runs
    dispatcher(ctx).runs.clear()
    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(run_step(ctx, step_id, "node1")))
    first.start()
    try:
        wait_until(started.exists, 30, "the first attempt's build to start")
        pid = _builder_pid(ctx.work_root)
        assert pid is not None
        subprocess.run(["kill", "-9", str(pid)], check=True)  # the builder only: the worker lives
    finally:
        first.join(timeout=60)
    assert results == ["killed"]
    view = control.show_build(ctx, build_id)
    (step,) = view.steps
    assert (step.state, step.attempt) == ("ready", 1)
    assert step.error == "attempt 1: its builder was killed by SIGKILL, not by the farm"
    assert dispatcher(ctx).runs == [(step_id, 2)]
    drain(ctx)
    view = control.show_build(ctx, build_id)
    assert view.state == "succeeded", view
    assert (view.steps[0].attempt, view.steps[0].error) == (2, None)
    assert not list(ctx.work_root.glob(f"{build_id}-*"))


KILL_DPKG_BUILDPACKAGE = """
p=$PPID
while [ "$p" -gt 1 ]; do
    if tr '\\0' ' ' < /proc/$p/cmdline | grep -q dpkg-buildpackage; then kill -9 "$p"; sleep 10; exit 1; fi
    p=$(cut -d' ' -f4 /proc/$p/stat)
done
exit 1
"""
"""What the OOM killer does to a build, every time: SIGKILL to dpkg-buildpackage (an ancestor)."""


def test_builder_killed_on_the_last_attempt_fails_with_the_reason(ctx: FarmContext, tmp_path: Path) -> None:
    src, killer = tmp_path / "src", tmp_path / "oom-killer.sh"
    killer.write_text(KILL_DPKG_BUILDPACKAGE)
    make_package(src, "doomed", build=f"sh {killer}")
    build_id = _submit(ctx, src, "doomed")
    drain(ctx)
    view = control.show_build(ctx, build_id)
    assert view.state == "failed", view
    (step,) = view.steps
    assert step.attempt == KILLED_ATTEMPTS_MAX
    assert step.error == (
        "dpkg-buildpackage was killed by SIGKILL (not by the farm: out of memory, or an operator?) "
        f"(attempt {KILLED_ATTEMPTS_MAX} of {KILLED_ATTEMPTS_MAX})"
    )


class FullLogWriter:
    """A log store that is full: every line is refused; records whether it was closed."""

    def __init__(self) -> None:
        self.closed = False

    def write_line(self, line: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self.closed = True


def test_full_log_store_fails_the_attempt_and_closes_its_writer(
    ctx: FarmContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    make_package(src, "chatty")
    build_id = _submit(ctx, src, "chatty")
    ((step_id, _),) = dispatcher(ctx).runs
    writer = FullLogWriter()
    monkeypatch.setattr(ctx.store, "open_log", lambda key: writer)
    assert run_step(ctx, step_id, "node1") == "failed"
    assert writer.closed
    (step,) = control.show_build(ctx, build_id).steps
    assert step.error == "OSError: [Errno 28] No space left on device"
    assert dispatcher(ctx).advances == [build_id]  # the build moves on


def test_reaper_sweeps_dead_attempts_directories_only(ctx: FarmContext, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "lib")
    build_id = _submit(ctx, src, "lib")
    ((step_id, _),) = dispatcher(ctx).runs
    with ctx.db.session() as session:  # two attempts died before this one
        session.execute(update(Step).where(Step.id == step_id).values(attempt=2))
    claim = claim_step(ctx, step_id, "node1")
    assert claim is not None and claim.attempt == 3
    chroots = chroot_root(ctx.settings.buildenv.sbuild_tmpdir, ctx.settings.state_dir)
    assert chroots.parent == tmp_path / "shm" and chroots.name.startswith("buildfarm-")
    live = [ctx.work_root / f"{build_id}-lib-3", chroots / f"{build_id}-lib-3" / "sbuild.abcdefghij"]
    dead = [
        ctx.work_root / f"{build_id}-lib-1",
        chroots / f"{build_id}-lib-1" / "sbuild.0123456789",
        ctx.work_root / f"{build_id + 7}-gone-1",  # its build no longer exists
    ]
    busy = ctx.work_root / f"{build_id}-lib-2"  # dead, but a process still works in it
    others = [ctx.work_root / "publish-x1y2", tmp_path / "shm" / "sbuild.notours", chroots / "notes"]
    for path in [*live, *dead, busy, *others]:
        (path / "etc").mkdir(parents=True)
    holder = subprocess.Popen(["sleep", "60"], cwd=busy)
    try:
        swept = sweep_dead_attempts(ctx)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(swept) == sorted([dead[0], dead[1].parent, dead[2]])
    assert [p for p in dead if p.exists()] == []
    assert all(p.exists() for p in [*live, busy, *others])
    assert sweep_dead_attempts(ctx) == [busy]  # once nothing uses it


def _refusing_store(ctx: FarmContext, monkeypatch: pytest.MonkeyPatch, refusals: int) -> list[int]:
    """The artifact store refuses the first ``refusals`` outputs as a read-only disk would."""
    calls: list[int] = []
    put_file = ctx.store.put_file

    def refusing(path: Path) -> object:
        calls.append(1)
        if len(calls) <= refusals:
            raise OSError(errno.EROFS, "Read-only file system")
        return put_file(path)

    monkeypatch.setattr(ctx.store, "put_file", refusing)
    return calls


def test_read_only_artifact_store_is_waited_out_not_a_failed_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by make chaos: a read-only or full artifact store failed the step on attempt 1,
    throwing away a good build; the attempt now waits (keeping its lease) and stores it."""
    ctx = make_test_context(
        tmp_path,
        f"sqlite:///{tmp_path / 'state.db'}",
        repository_retry_min_seconds=0.05,
        repository_retry_max_seconds=0.1,
    )
    try:
        src = tmp_path / "src"
        make_package(src, "sturdy")
        build_id = _submit(ctx, src, "sturdy")
        ((step_id, _),) = dispatcher(ctx).runs
        calls = _refusing_store(ctx, monkeypatch, refusals=2)
        assert run_step(ctx, step_id, "node1") == "succeeded"
        (step,) = control.show_build(ctx, build_id).steps
        # 2 refused, then every output stored (side by side: a round refused for one may have
        # stored another already, and the next round puts that again, as the same object)
        assert (step.state, step.attempt) == ("succeeded", 1) and len(calls) >= 2 + len(step.outputs)
        debs = [o["filename"] for o in step.outputs if o["filename"].endswith(".deb")]
        assert debs == ["sturdy_1.0_all.deb"]
        assert all(ctx.store.has(o["sha256"]) for o in step.outputs)
        assert step.log is not None and "storing outputs waits 0.05 s" in Path(step.log).read_text()
    finally:
        ctx.db.dispose()


def test_artifact_store_refusing_past_the_bound_fails_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", repository_give_up_seconds=0)
    try:
        src = tmp_path / "src"
        make_package(src, "doomed")
        build_id = _submit(ctx, src, "doomed")
        ((step_id, _),) = dispatcher(ctx).runs
        _refusing_store(ctx, monkeypatch, refusals=1000)
        assert run_step(ctx, step_id, "node1") == "failed"
        (step,) = control.show_build(ctx, build_id).steps
        assert step.error == "OSError: [Errno 30] Read-only file system"
    finally:
        ctx.db.dispose()
