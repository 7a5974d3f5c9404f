"""The local farm's owner socket: how the CLI reaches the farm's running API process.

A started local farm runs an ``api`` process that has the whole API imported and its database
open; besides the network port (token auth, :mod:`buildfarm.api.app`) it listens on a unix
socket in the private state directory (``run/api.sock``) where it answers as the farm's own
admin, exactly like the in-process application (:class:`buildfarm.local.inprocess.LocalFarm`):
the CLI then pays an HTTP request instead of importing the server stack into every command.

Who can reach the socket owns the farm, as who can read the state directory does (0700,
:mod:`buildfarm.local.private`); the API process also refuses a peer whose uid is not its own
(``SO_PEERCRED``), in case the directory's mode was ever loosened.

This module is what the CLI imports on every local command: the standard library only.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

LOCAL_URL = "http://local-farm"
"""The base URL of the local farm's client: in-process or over the owner socket, never the network."""
SOCKET_NAME = "api.sock"
LOGIN_HEADER = "X-Buildfarm-Login"
"""The local CLI's login name, sent with each request to its farm: the user a build it submits
is recorded for (as when the CLI called the API in-process).  It grants nothing: whoever
reaches the farm this way owns it (admin) whatever name it gives."""
MAX_SOCKET_PATH = 107
"""Bytes of a unix socket's path (``sun_path`` holds 108 with its NUL): a state directory deeper
than that gets no owner socket, and the CLI calls the API in-process as before."""
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def where(state_dir: Path) -> str:
    """Completes "the farm ..." in messages, whichever way the CLI reaches the local farm."""
    return f"in {state_dir}"


def socket_path(state_dir: Path) -> Path | None:
    """Where the farm's API process listens for its owner; None when the path is too long for one."""
    path = state_dir / "run" / SOCKET_NAME
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def answering_socket(state_dir: Path) -> Path | None:
    """The owner socket if an API process accepts connections on it now, else None (never started,
    stopped, killed: its socket file left behind refuses)."""
    path = socket_path(state_dir)
    if path is None or not path.is_socket():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return None
    return path


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected unix socket (``SO_PEERCRED``)."""
    _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return int(uid)


def is_owner(sock: socket.socket) -> bool:
    """Whether the peer runs as this process's user: the only one the owner socket answers."""
    return peer_uid(sock) == os.getuid()


def listen(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, 0600 from its creation (a dead process's file replaced)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(os.fspath(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(128)
    return sock
