"""The local farm's state is its owner's alone: the state directory 0700, its files 0600.

The state directory holds the database (users' token hashes, every build's record), the logs of
personal builds, uploaded sources and ``farm.json`` with the private Redis's password; on a
shared machine another local user must read none of it. The published repositories live there
too, but the repository server serves them over HTTP to whoever may reach it, as before.

Every farm process but the nodes runs with umask 077 (:data:`buildfarm.local.procs.PRIVATE_UMASK`),
and so does the CLI while it writes into the state directory; nodes keep umask 022 for their
builders' sake (:data:`buildfarm.local.procs.BUILDER_UMASK`) and are kept private by the 0700
directory their work, logs and artifacts live in. A state directory made by an older buildfarm
(0755, files 0644) is tightened on the next start; a directory that holds other things than a
farm's state is refused instead of being changed behind its owner's back.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from buildfarm.local.procs import PRIVATE_UMASK
from buildfarm.model.errors import PermanentError
from buildfarm.model.settings import FARM_FILE

FARM_MARKERS = frozenset(
    {FARM_FILE, "buildfarm.db", "run", "logs", "artifacts", "repos", "redis", "registry", "signing", "work"}
)
"""Entries only a farm's state directory has: one of them (or emptiness) makes a directory ours."""


def private_state_dir(state_dir: Path) -> None:
    """Make ``state_dir`` (0700) or tighten it and its direct entries; umask 077 from now on."""
    os.umask(PRIVATE_UMASK)
    if not state_dir.exists():
        state_dir.mkdir(mode=0o700, parents=True)
        return
    entries = {p.name for p in state_dir.iterdir()}
    if stat.S_IMODE(state_dir.stat().st_mode) & 0o077:
        if entries and not entries & FARM_MARKERS:
            raise PermanentError(
                f"state dir {state_dir} is open to other users and holds more than a farm: "
                "chmod 700 it or choose another BUILDFARM_STATE_DIR"
            )
        state_dir.chmod(0o700)
    for name in entries & FARM_MARKERS | {n for n in entries if n.startswith("buildfarm.db")}:
        _tighten(state_dir / name)


def _tighten(path: Path) -> None:
    """0700 for a directory, 0600 for a file (its owner's bits kept), if it is ours."""
    info = path.lstat()
    if info.st_uid != os.getuid() or stat.S_ISLNK(info.st_mode):
        return
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        path.chmod(mode & 0o700)


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``data`` as JSON, mode 0600 from its first byte."""
    write_private_text(path, json.dumps(data, indent=2) + "\n")


def write_private_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)  # an older leftover tmp may have had other bits
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_password() -> str:
    """A Redis password: 256 random bits, URL-safe (it goes into ``redis://:<password>@...``)."""
    return secrets.token_urlsafe(32)


def url_password(url: str | None) -> str | None:
    return urlsplit(url).password if url else None


def redacted_url(url: str | None) -> str | None:
    """``url`` with its password shown as ``***`` (for status output and messages)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
