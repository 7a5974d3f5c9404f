"""Run a build command in its own process group, stream its output line by line, stop it on demand.

Killing the whole group matters: dpkg-buildpackage and sbuild start many children, and a
cancelled or lease-less build must leave nothing running.  The command runs under the guard
(``guard.pl``: a Perl script, it says why), which kills all of it when the worker dies (``kill -9``
of the node, ``buildfarm stop``) and exits as the command did, so a builder killed by a signal the farm
did not send (the OOM killer, an operator) is told apart from a failed build: the step is then
built again on a new attempt instead of failing (:attr:`ProcessOutcome.killed_by`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

KILL_GRACE_SECONDS = 10.0
"""After SIGTERM, how long a build may take to clean up before SIGKILL."""
CANCEL_CHECK_SECONDS = 0.2
"""How often a running command's watcher looks at the cancel flag and the deadline.  The command's
exit is not polled: the watcher is woken the moment it is reaped, so a step holds its node no
longer than its command runs (it waited up to 0.5 s after every command before)."""
GUARD = Path(__file__).with_name("guard.pl")


@dataclass
class ProcessOutcome:
    returncode: int
    cancelled: bool
    timed_out: bool

    @property
    def killed_by(self) -> str | None:
        """The signal that ended the command when the farm did not send it (cancel, timeout):
        the system's doing (the OOM killer, an operator), not the build's."""
        if self.returncode >= 0 or self.cancelled or self.timed_out:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


BUILDER_UMASK = 0o022
"""Builders run with the usual umask whatever their caller's (the local CLI and control processes
use 077 for the private state dir): dpkg-deb refuses a 0700 control directory, and a package's
files must not be installed 0600."""


def run_streaming(
    command: Sequence[str],
    *,
    cwd: Path,
    log: Callable[[str], None],
    cancel: threading.Event,
    timeout_seconds: float,
    env: dict[str, str] | None = None,
) -> ProcessOutcome:
    """Run ``command``, sending each output line to ``log``; stop it on ``cancel`` or timeout."""
    proc = subprocess.Popen(
        ["perl", str(GUARD), str(os.getpid()), "--", *command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        umask=BUILDER_UMASK,
    )
    assert proc.stdout is not None
    stop_reason: list[str] = []
    exited = threading.Event()  # set as soon as the command is reaped: the watcher ends at once

    def watch() -> None:
        deadline = time.monotonic() + timeout_seconds
        while not exited.is_set():
            if cancel.is_set():
                stop_reason.append("cancelled")
                _kill_group(proc)
                return
            if time.monotonic() > deadline:
                stop_reason.append("timeout")
                _kill_group(proc)
                return
            exited.wait(CANCEL_CHECK_SECONDS)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with proc.stdout:
            for raw in proc.stdout:
                log(raw.decode("utf-8", "replace").rstrip("\n"))
    except BaseException:  # a log that cannot be written (a full store) stops the build
        stop_reason.append("cancelled")
        _kill_group(proc)
        raise
    finally:
        proc.wait()
        exited.set()
        watcher.join()
        with contextlib.suppress(ProcessLookupError, PermissionError):  # reap what the command left behind
            os.killpg(proc.pid, signal.SIGKILL)
    return ProcessOutcome(
        returncode=proc.returncode, cancelled="cancelled" in stop_reason, timed_out="timeout" in stop_reason
    )


def describe_failure(what: str, outcome: ProcessOutcome, timeout_seconds: float) -> str:
    if outcome.cancelled:
        return f"{what} stopped: cancelled or lease lost"
    if outcome.timed_out:
        return f"{what} stopped after the {timeout_seconds:.0f} s step time limit"
    if outcome.killed_by:
        return f"{what} was killed by {outcome.killed_by} (not by the farm: out of memory, or an operator?)"
    return f"{what} exited with status {outcome.returncode}"
