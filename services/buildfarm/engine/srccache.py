"""Source packages made from trees, remembered by everything they were made from.

Submitting a branch again packs every tree again: ``dpkg-source -b`` (a process, a copy of the
tree, compression) for each package, seconds for thousands of trees although almost none
changed.  A tree's source package depends only on the tree's content, its source format, the
upstream tarballs beside it, the ``.dsc`` beside it (kept as it is when it matches) and the
``dpkg-source`` that makes it: those make the *tree key*, and the source package made for a key
is remembered (a small file under the work directory: its source key and the sha256 of the
packed source package in the artifact store).  The next submit of the same tree records those
without running ``dpkg-source`` or reading the source package at all.  The cache is only a
shortcut: an entry whose object left the store is a miss, and a lost cache directory costs one
``dpkg-source`` per tree.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buildfarm.engine.context import FarmContext
from buildfarm.model.debsource import file_sha256
from buildfarm.model.errors import BuildfarmError
from buildfarm.model.planner import SourceInfo
from buildfarm.model.sources import tree_hash

log = logging.getLogger(__name__)

CACHE_DIR = "srcpkg-cache"
_KEY_VERSION = b"buildfarm-srcpkg-cache-v1\0"


@functools.cache
def dpkg_source_version() -> str:
    """The first line of ``dpkg-source --version`` (a new dpkg may pack differently)."""
    try:
        done = subprocess.run(
            ["dpkg-source", "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return "unknown"
    return done.stdout.splitlines()[0] if done.stdout else "unknown"


@dataclass(frozen=True)
class StoredSource:
    """A package's source package as a submit records it: what the planner needs of it, its
    source key (:func:`buildfarm.model.debsource.source_key`) and the sha256 of its packed
    tarball in the artifact store."""

    info: SourceInfo
    source_key: str
    sha256: str


class SourceCache:
    """Tree key -> the source key and packed tarball of the source package made from it."""

    def __init__(self, ctx: FarmContext) -> None:
        self.ctx = ctx
        self.root = ctx.work_root / CACHE_DIR

    def key(self, fmt: str, tree: Path, upstream: list[Path], beside_dsc: Path | None) -> str:
        digest = hashlib.sha256(_KEY_VERSION)
        digest.update(f"{dpkg_source_version()}\0{fmt}\0{tree_hash(tree)}\n".encode())
        for path in sorted(upstream, key=lambda p: p.name):
            digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
        if beside_dsc is not None and beside_dsc.is_file():
            digest.update(f"dsc\0{beside_dsc.name}\0{file_sha256(beside_dsc)}\n".encode())
        return digest.hexdigest()

    def lookup(self, key: str, what: str) -> tuple[str, str] | None:
        """(source key, sha256) remembered for ``key`` whose tarball the store still holds; None
        on a miss."""
        try:
            entry = json.loads((self.root / key).read_text())
            source, sha256 = str(entry["source_key"]), str(entry["sha256"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        try:
            if not self.ctx.store.has(sha256):
                return None
        except BuildfarmError as exc:  # the store cannot say now: make it (and store it) again
            log.info("%s: source package cache entry %s not used: %s", what, key[:12], exc)
            return None
        return source, sha256

    def remember(self, key: str, source: str, sha256: str) -> None:
        """Remember the source package made for ``key`` (one atomic file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "w") as handle:
            json.dump({"source_key": source, "sha256": sha256}, handle)
        os.replace(tmp, self.root / key)
