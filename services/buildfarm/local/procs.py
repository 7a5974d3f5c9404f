"""Background processes with pid files: start detached, check, stop the whole process group.

A pid file holds the pid alone (``kill $(cat run/node1.pid)`` works); beside it, ``<name>.started``
holds the process's start time (``/proc/<pid>/stat`` field 22), so a pid the kernel has since
given to another process is never taken for the farm's (nor signalled).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from buildfarm.model.errors import PermanentError, ServiceUnavailableError

STOP_GRACE_SECONDS = 15.0
"""How long a process gets after SIGTERM (a worker finishing its Celery bookkeeping) before SIGKILL."""


PRIVATE_UMASK = 0o077
"""Files a farm process creates are its owner's alone (the state dir holds logs of personal builds)."""
# Nodes keep the builders' umask (runners.process.BUILDER_UMASK, which every builder is started
# with anyway): what nodes write stays private all the same, inside the 0700 state directory.


def redis_config(port: int, directory: Path, password: str | None) -> str:
    """The config file of a private, non-persistent redis-server on localhost that wants a password.

    The password goes in this file (mode 0600), never on the command line, which every local user
    can read in ``ps``. ``None``: no password (a farm started by an older buildfarm, until its
    next full restart).
    """
    return (
        f"port {port}\n"
        "bind 127.0.0.1\n"
        "protected-mode yes\n"
        'save ""\n'
        "appendonly no\n"
        f'dir "{directory}"\n'
        "daemonize no\n"
    ) + (f"requirepass {password}\n" if password else "")


def redis_server_command(
    port: int, directory: Path, binary: str = "redis-server", config: Path | None = None
) -> list[str]:
    """A private, non-persistent redis-server on localhost, in the foreground.

    With ``config`` (written by :func:`redis_config`) everything, the password included, comes
    from that file; without it the server has no password (tests' throwaway brokers).
    """
    if config is not None:
        return [binary, str(config)]
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        "--daemonize",
        "no",
    ]


def registry_config(root: Path, port: int) -> str:
    """Config of a private docker-registry (distribution 2.8): never the packaged one, which
    listens on every interface; filesystem storage under ``root``; deletes allowed (retention)."""
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        "health:\n  storagedriver:\n    enabled: false\n"
    )


def registry_command(config: Path, binary: str = "docker-registry") -> list[str]:
    """docker-registry in the foreground; run it with :func:`registry_env` (no AWS_CA_BUNDLE)."""
    return [binary, "serve", str(config)]


def registry_env(env: dict[str, str]) -> dict[str, str]:
    """The registry panics at start when AWS_CA_BUNDLE is set (even for filesystem storage)."""
    return {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}


APT_CACHE_PORTS = (20000, 32767)
"""apt-cacher-ng 3.7 cannot bind a port above 32767 ("Error resolving address for binding"):
its port is picked in this range, below Linux's ephemeral ports."""


def apt_cache_config(directory: Path, port: int) -> str:
    """acng.conf of a private apt-cacher-ng (Debian's caching proxy for package archives): on
    127.0.0.1 only (the packaged one listens everywhere), its cache, logs and admin socket under
    ``directory``; proxy mode (apt names the upstream URL), so no remapping files are needed."""
    return (
        f"CacheDir: {directory / 'cache'}\n"
        f"LogDir: {directory / 'log'}\n"
        f"SocketPath: {directory / 'socket'}\n"
        "SupportDir: /usr/lib/apt-cacher-ng\n"
        f"Port: {port}\n"
        "BindAddress: 127.0.0.1\n"
        "ForeGround: 1\n"
        "ExThreshold: 4\n"  # days an unreferenced file stays after an expiration run
    )


def apt_cache_command(config_dir: Path, binary: str = "apt-cacher-ng") -> list[str]:
    """apt-cacher-ng in the foreground, reading only ``config_dir`` (never /etc/apt-cacher-ng)."""
    return [binary, "-c", str(config_dir)]


def free_apt_cache_port(host: str = "127.0.0.1") -> int:
    """A free port apt-cacher-ng can bind (see :data:`APT_CACHE_PORTS`)."""
    low, high = APT_CACHE_PORTS
    for _ in range(200):
        port = secrets.randbelow(high - low) + low
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise PermanentError(f"no free port for apt-cacher-ng between {low} and {high}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, logs: list[Path] | None = None
) -> None:
    """Wait for ``predicate``; past ``timeout`` one line names ``what`` and the ``logs`` that say
    why (the farm's own error: `buildfarm start` printed a traceback for a node that did not come up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    where = f": see {', '.join(str(log) for log in logs)}" if logs else ""
    raise ServiceUnavailableError(f"{what}: not ready after {timeout:.0f} s{where}")


class Supervisor:
    """Processes of one farm: ``<state>/run/<name>.pid`` and ``<state>/logs/<name>.log``."""

    def __init__(self, state_dir: Path) -> None:
        self.run_dir = state_dir / "run"
        self.log_dir = state_dir / "logs"

    def pid(self, name: str) -> int | None:
        """The pid of ``name`` if it is still the process that was started, else None."""
        try:
            pid = int((self.run_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        if not _alive(pid):
            return None
        try:
            started = int((self.run_dir / f"{name}.started").read_text())
        except (OSError, ValueError):  # pid files of older versions have no start time
            return pid
        return pid if _start_time(pid) == started else None

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.run_dir.glob("*.pid")) if self.run_dir.is_dir() else []

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        cwd: Path | None = None,
        umask: int = PRIVATE_UMASK,
    ) -> int:
        """Start ``command`` in its own session (so stopping kills its children too)."""
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_fd = os.open(self.log_path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as log:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
                umask=umask,
            )
        started = _start_time(proc.pid)
        (self.run_dir / f"{name}.started").write_text(f"{started}\n" if started else "")
        (self.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM) -> bool:
        """Stop one process group; returns whether something was running."""
        pid = self.pid(name)
        (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        (self.run_dir / f"{name}.started").unlink(missing_ok=True)
        if pid is None:
            return False
        _signal_group(pid, sig)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(pid, signal.SIGKILL)
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[-1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
