"""What the environment cache and the dependency layers share: a directory of checked tarballs.

Layout of such a directory (shared by the farm's nodes on one machine)::

    <name>.tar           the tarball
    <name>.tar.sha256    "<size>:<mtime_ns> <digest>": hashing ~0.5 GB takes seconds, so the
                         full check runs again only when the file changed (:func:`file_digest`)
    <name>.json          its record; the entry exists once this file does
    .new-<pid>-<random>/ one being made (never read; removed under the lock: its maker died)
    .lock                held while making, evicting or pruning (one maker at a time)

A tarball is used only after its size and sha256 are checked against its record; making writes
into a ``.new-*`` directory and renames, the record last, so a maker killed halfway leaves no
entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def file_digest(path: Path) -> str:
    """sha256 of ``path``, remembered beside it keyed by size and mtime (so a truncated or
    rewritten file is hashed again, an unchanged one is not)."""
    stat = path.stat()
    sidecar = path.with_name(path.name + ".sha256")
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    try:
        cached_stamp, cached = sidecar.read_text().split()
        if cached_stamp == stamp:
            return cached
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    value = digest.hexdigest()
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.write_text(f"{stamp} {value}\n")
    os.replace(tmp, sidecar)
    return value


class TarballDir:
    """The entries of ``root`` as laid out above; subclasses say what a record holds."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _meta_path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def _tar_path(self, name: str) -> Path:
        return self.root / f"{name}.tar"

    @staticmethod
    def _whole(path: Path, size: int, digest: str) -> bool:
        """The tarball at ``path`` is as recorded: ``size`` bytes with sha256 ``digest``."""
        try:
            return path.stat().st_size == size and file_digest(path) == digest
        except OSError:
            return False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                for leftover in self.root.glob(".new-*"):  # under the lock: a dead maker's
                    shutil.rmtree(leftover, ignore_errors=True)
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _making(self, name: str = "") -> Iterator[Path]:
        """A fresh ``.new-*`` directory to make an entry in (``.new-<name>-*`` with ``name``: a
        subclass that locks per entry finds its own leftovers), removed afterwards."""
        tag = f"{name}-" if name else ""
        work = self.root / f".new-{tag}{os.getpid()}-{secrets.token_hex(4)}"
        work.mkdir()
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _add(self, work: Path, tarball: Path, name: str, meta: dict[str, Any]) -> None:
        """Move ``tarball`` (made and hashed with :func:`file_digest` in ``work``) in as entry
        ``name`` with record ``meta``, the record last."""
        os.replace(tarball, self._tar_path(name))
        os.replace(tarball.with_name(tarball.name + ".sha256"), self.root / f"{name}.tar.sha256")
        (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(work / "meta.json", self._meta_path(name))  # the entry exists from here on

    def _remove(self, name: str) -> None:
        self._meta_path(name).unlink(missing_ok=True)  # first: no half entry is ever listed
        self._tar_path(name).unlink(missing_ok=True)
        self.root.joinpath(f"{name}.tar.sha256").unlink(missing_ok=True)

    def _remove_unrecorded(self) -> None:
        """Remove tarballs without their record (a maker died after renaming; under the lock)."""
        for tar in self.root.glob("*.tar"):
            if not self._meta_path(tar.stem).exists():
                self._remove(tar.stem)
