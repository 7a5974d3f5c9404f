"""Source packages made from trees, remembered by everything they were made from.

Submitting a branch again packs every tree again: ``dpkg-source -b`` (a process, a copy of the
tree, compression) for each package, seconds for thousands of trees although almost none
changed.  A tree's source package depends only on the tree's content, its source format, the
upstream tarballs beside it, the ``.dsc`` beside it (kept as it is when it matches) and the
``dpkg-source`` that makes it: those make the *tree key*, and the source package made for a key
is remembered (a small file under the work directory naming the packed source package in the
artifact store).  The next submit of the same tree unpacks that instead of running
``dpkg-source``.  The cache is only a shortcut: an entry whose object left the store is a miss,
and a lost cache directory costs one ``dpkg-source`` per tree.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from buildfarm.engine.context import FarmContext
from buildfarm.model.debsource import SourcePackage, file_sha256, pack_source_package, source_package
from buildfarm.model.errors import BuildfarmError
from buildfarm.model.sources import tree_hash, unpack_tree

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


class SourceCache:
    """Tree key -> the packed source package made from it (its sha256 in the artifact store)."""

    def __init__(self, ctx: FarmContext) -> None:
        self.ctx = ctx
        self.root = ctx.work_root / CACHE_DIR
        self.hits = 0

    def key(self, fmt: str, tree: Path, upstream: list[Path], beside_dsc: Path | None) -> str:
        digest = hashlib.sha256(_KEY_VERSION)
        digest.update(f"{dpkg_source_version()}\0{fmt}\0{tree_hash(tree)}\n".encode())
        for path in sorted(upstream, key=lambda p: p.name):
            digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
        if beside_dsc is not None and beside_dsc.is_file():
            digest.update(f"dsc\0{beside_dsc.name}\0{file_sha256(beside_dsc)}\n".encode())
        return digest.hexdigest()

    def restore(self, key: str, work: Path, what: str) -> SourcePackage | None:
        """The source package remembered for ``key``, unpacked into ``work``; None on a miss."""
        try:
            sha256 = (self.root / key).read_text().strip()
        except FileNotFoundError:
            return None
        packed = work / ".cached.tar.gz"
        unpacked = work / ".cached"
        try:
            self.ctx.store.fetch(sha256, packed)
            unpack_tree(packed, unpacked)
            dscs = list(unpacked.glob("*.dsc"))
            if len(dscs) != 1:
                return None
            for path in unpacked.iterdir():
                os.replace(path, work / path.name)
            package = source_package(work / dscs[0].name, what)
        except BuildfarmError as exc:  # gone from the store, or not what it was: make it again
            log.info("%s: source package cache entry %s not used: %s", what, key[:12], exc)
            return None
        finally:
            packed.unlink(missing_ok=True)
            shutil.rmtree(unpacked, ignore_errors=True)
        self.hits += 1
        return package

    def remember(self, key: str, package: SourcePackage) -> None:
        """Store ``package`` packed and remember it for ``key`` (one atomic file)."""
        sha256 = self.ctx.store.put_bytes(pack_source_package(package)).sha256
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "w") as handle:
            handle.write(sha256 + "\n")
        os.replace(tmp, self.root / key)
