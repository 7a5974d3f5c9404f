"""The builder's guard: a builder never outlives the worker that started it.

A build runs in its own process group so that cancelling it kills all of it, which also means a
node killed with ``kill -9`` (its process group, or the worker process alone) or stopped by
``buildfarm stop`` used to leave its builders running beside the new attempt on another node.
So every build command is started by this small process instead (``run_streaming`` does it):

* it asks the kernel for ``SIGTERM`` when its parent dies (``PR_SET_PDEATHSIG``), and checks the
  parent is still the one that started it (the worker may have died before the ``prctl``);
* it is a child subreaper (``PR_SET_CHILD_SUBREAPER``): every descendant that is orphaned, even
  one that left the process group with ``setsid`` (sbuild's unshare helpers), is reparented to it,
  so it can find and kill all of them through ``/proc``;
* when it is told to stop, or its parent dies, it sends ``SIGTERM`` to every descendant, waits up
  to ``GRACE_SECONDS`` and sends ``SIGKILL`` to what is left; when the command ends by itself,
  what it left running is killed at once;
* it exits as the command did: the same status, or the same signal, so the worker can tell a
  builder killed by the system (the OOM killer, an operator) from a build that failed.

Run as a script (``python -I guard.py <parent pid> -- <command>...``): it imports nothing of the
farm, so it starts in tens of milliseconds.  It starts once for every build command, so it imports
as little as it can: the C module ``_signal`` under :mod:`signal` (without its enums), no
:mod:`contextlib`, and ``prctl`` called through the C module ``_ctypes`` as :mod:`ctypes` itself
calls a function, without importing :mod:`ctypes` (each about 4 ms of CPU, of the guard's 15-20
ms, at every step).  Linux only.
"""

import _ctypes
import os
import resource
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing costs more than all of the above
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # the same functions and numbers, without signal.py's enum classes

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 8.0
"""After SIGTERM, how long the command may clean up; below the worker's own 10 s, so the guard,
not the worker's SIGKILL of the group, ends it (the group kill misses processes that left it)."""
KILL_ROUNDS = 20
"""Bound on rounds of "find descendants, kill them" (a fork bomb cannot keep the guard forever)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WATCHED = {signal.SIGCHLD, *STOP_SIGNALS}


class _CInt(_ctypes._SimpleCData):  # type: ignore[type-arg]  # generic in the stubs only
    """C ``int`` (:class:`ctypes.c_int`: the same definition)."""

    _type_ = "i"


class _CFunction(_ctypes.CFuncPtr):
    """A C function returning ``int`` that keeps ``errno`` (:class:`ctypes.CDLL`'s functions with
    ``use_errno=True``: the same flags)."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _CInt


class _Process:
    """The symbols of the running program (``ctypes.CDLL(None)``): libc's among them."""

    _handle = _ctypes.dlopen(None)  # type: ignore[arg-type]  # None: the program itself, as CDLL(None)


def _prctl(option: int, value: int) -> None:
    prctl = _CFunction(("prctl", _Process()))  # type: ignore[arg-type]  # anything with a _handle
    if prctl(option, value, 0, 0, 0) != 0:
        raise OSError(_ctypes.get_errno(), f"prctl({option}) failed")


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (from ``/proc``: the parent field of each ``stat``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _reap(command_pid: int) -> int | None:
    """Collect every exited child (orphans included); the command's wait status if it was one."""
    status = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == command_pid:
            status = wait_status


def _has_children() -> bool:
    """Whether this process has a child, live or not yet collected (none: ``ECHILD``).

    A subreaper with no child has no descendant at all: an orphan below it is reparented to it
    before its parent's exit is reported, and a descendant whose parent lives has a child of
    ours above it."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _kill_all(me: int, command_pid: int, gently: bool) -> int | None:
    """Kill every descendant (SIGTERM and a grace period first if ``gently``); the command's status
    if it was collected meanwhile.  A command that ended by itself leaving nothing behind (the
    usual case) costs no look through ``/proc``: tens of milliseconds of every step before."""
    status = None
    if not gently:
        status = _reap(command_pid)
        if not _has_children():
            return status
    else:
        for pid in descendants(me):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline:
            status = _reap(command_pid) if status is None else status
            if not descendants(me):
                return status
            time.sleep(0.1)
    for _ in range(KILL_ROUNDS):
        left = descendants(me)
        if not left:
            break
        for pid in left:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.05)
        found = _reap(command_pid)
        status = found if found is not None else status
    found = _reap(command_pid)
    return found if found is not None else status


def _signal(pid: int, sig: int) -> None:
    try:  # noqa: SIM105 -- contextlib.suppress would import contextlib at every step's start
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exit_like(status: int | None, stopped_by: int | None) -> None:
    """Exit as the command did (a signal is re-raised on the guard itself)."""
    sig = stopped_by
    if sig is None and status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
    if sig is not None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # re-raising SIGSEGV must not dump the guard
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        sys.exit(128 + sig)  # not reached for a deadly signal
    sys.exit(os.waitstatus_to_exitcode(status) if status is not None else 1)


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        sys.exit("usage: guard.py <parent pid> -- <command>...")
    parent, command = int(argv[1]), argv[3:]
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)  # taken with sigtimedwait: no handler races
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(f"guard: the worker {parent} died before the build started")
    command_pid = os.fork()
    if command_pid == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"cannot run {command[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        os._exit(127)
    me = os.getpid()
    status: int | None = None
    stopped_by: int | None = None
    while status is None:
        info = signal.sigtimedwait(WATCHED, 1.0)
        status = _reap(command_pid)
        if info is not None and info.si_signo != signal.SIGCHLD:
            stopped_by = info.si_signo
            break
        if os.getppid() != parent:  # no PDEATHSIG came (the parent thread outlived the process?)
            stopped_by = signal.SIGTERM
            break
    found = _kill_all(me, command_pid, gently=stopped_by is not None)
    _exit_like(status if status is not None else found, stopped_by)


if __name__ == "__main__":
    main(sys.argv)
