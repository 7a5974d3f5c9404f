"""A builder never outlives its worker: ``kill -9`` of the node's process group, of the worker
process alone, or ``buildfarm stop``'s SIGTERM leave no builder process behind, not even one that
left the process group with ``setsid``.  And a builder killed by a signal the farm did not send is
reported as such.  ~1 s a case (a python worker and two ``sleep`` processes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from buildfarm.runners.process import GUARD, describe_failure, run_streaming

from helpers import wait_for, wait_until

WORKER = """
import sys, threading
from pathlib import Path
from buildfarm.runners.process import run_streaming
run_streaming(sys.argv[1:], cwd=Path.cwd(), log=print, cancel=threading.Event(), timeout_seconds=120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_pid(path: Path) -> int:
    def read() -> int | None:
        try:
            text = path.read_text()  # once: the shell may be writing it
        except FileNotFoundError:
            return None
        return int(text) if text.endswith("\n") else None

    return wait_for(read, 20, f"{path.name} written")


@pytest.mark.parametrize("how", ["kill -9 of the node's group", "kill -9 of the worker alone", "stop"])
def test_builders_die_with_their_worker(tmp_path: Path, how: str) -> None:
    builder, escaped = tmp_path / "builder.pid", tmp_path / "escaped.pid"
    script = f"setsid sleep 60 & echo $! > {escaped}; echo $$ > {builder}; exec sleep 60"
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, "sh", "-c", script], cwd=tmp_path, start_new_session=True
    )
    try:
        pids = [_read_pid(builder), _read_pid(escaped)]
        assert all(_alive(pid) for pid in pids)
        if how == "stop":
            os.killpg(worker.pid, signal.SIGTERM)
        elif how.endswith("group"):
            os.killpg(worker.pid, signal.SIGKILL)
        else:
            os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=20)
        wait_until(lambda: not any(_alive(pid) for pid in pids), 20, "the builder processes to be gone")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def test_a_builder_killed_by_the_system_is_told_from_a_failure(tmp_path: Path) -> None:
    def run(script: str) -> tuple[str | None, str]:
        outcome = run_streaming(
            ["sh", "-c", script],
            cwd=tmp_path,
            log=lambda _: None,
            cancel=threading.Event(),
            timeout_seconds=60,
        )
        return outcome.killed_by, describe_failure("build", outcome, 60)

    assert run("kill -9 $$") == (
        "SIGKILL",
        "build was killed by SIGKILL (not by the farm: out of memory, or an operator?)",
    )
    assert run("exit 2") == (None, "build exited with status 2")
    cancel = threading.Event()
    cancel.set()
    cancelled = run_streaming(
        ["sleep", "30"], cwd=tmp_path, log=lambda _: None, cancel=cancel, timeout_seconds=60
    )
    assert cancelled.cancelled and cancelled.killed_by is None


def test_builders_get_the_usual_umask_whatever_their_caller_has(tmp_path: Path) -> None:
    """The local CLI and control processes run with umask 077 (a private state dir); a builder
    started from one must still write 0644 files (dpkg-deb refuses a 0700 control directory)."""
    old = os.umask(0o077)
    try:
        outcome = run_streaming(
            ["sh", "-c", "touch made && mkdir dir"],
            cwd=tmp_path,
            log=lambda _: None,
            cancel=threading.Event(),
            timeout_seconds=60,
        )
    finally:
        os.umask(old)
    assert outcome.returncode == 0
    assert ((tmp_path / "made").stat().st_mode & 0o777, (tmp_path / "dir").stat().st_mode & 0o777) == (
        0o644,
        0o755,
    )


def _guarded(tmp_path: Path, *command: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """The guard run on ``command`` and its looks through ``/proc`` for descendants (it writes a
    line to ``BUILDFARM_GUARD_TRACE`` at each)."""
    trace = tmp_path / "guard.trace"
    done = subprocess.run(
        ["perl", str(GUARD), str(os.getpid()), "--", *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=os.environ | {"BUILDFARM_GUARD_TRACE": str(trace)},
    )
    return done, len(trace.read_text().splitlines()) if trace.exists() else 0


def test_a_command_that_leaves_nothing_running_costs_no_look_through_proc(tmp_path: Path) -> None:
    """The usual end of a step's command: the guard knows from its children alone (it is their
    subreaper) that nothing is left to kill; each look cost tens of milliseconds of a step."""
    done, looks = _guarded(tmp_path, "sh", "-c", "true; exit 3")
    assert (done.returncode, looks) == (3, 0)


def test_what_a_finished_command_left_running_is_killed_at_once(tmp_path: Path) -> None:
    escaped = tmp_path / "escaped.pid"
    done, looks = _guarded(tmp_path, "sh", "-c", f"setsid sleep 60 > /dev/null 2>&1 & echo $! > {escaped}")
    assert done.returncode == 0
    assert looks > 0
    pid = _read_pid(escaped)
    wait_until(lambda: not _alive(pid), 20, "the escaped process to be gone")


def test_a_command_started_from_a_thread_that_blocks_signals_has_none_blocked(tmp_path: Path) -> None:
    """The guard unblocks every signal whatever the worker's thread blocked (it must get its stop
    signals), so the build command starts with none blocked (its ``SigBlk`` is empty)."""
    lines: list[str] = []

    def run() -> None:
        blocked = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1}
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        run_streaming(
            ["grep", "SigBlk", "/proc/self/status"],  # the command itself (a shell blocks all while it forks)
            cwd=tmp_path,
            log=lines.append,
            cancel=threading.Event(),
            timeout_seconds=60,
        )

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert [line.split() for line in lines] == [["SigBlk:", "0000000000000000"]]


def test_a_left_process_whose_name_fakes_another_parent_is_killed_too(tmp_path: Path) -> None:
    """``/proc/<pid>/stat`` holds the command's name in parentheses, and a build names its own
    programs: one called ``x) S 1`` must not pass for a child of process 1 and outlive the build."""
    disguised = tmp_path / "x) S 1"
    shutil.copy("/bin/sleep", disguised)
    escaped = tmp_path / "escaped.pid"
    done, looks = _guarded(
        tmp_path, "sh", "-c", f"setsid '{disguised}' 60 > /dev/null 2>&1 & echo $! > {escaped}"
    )
    assert done.returncode == 0 and looks > 0
    pid = _read_pid(escaped)
    try:  # killed by the guard before it exits (it is their subreaper): no wait
        assert not _alive(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
