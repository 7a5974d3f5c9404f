"""Step tarballs kept unpacked: the read-only lower layer of each ``unshare`` step's overlay.

Unpacking a ~550 MB environment into tmpfs and removing it again costs ~1 s of every step on an
idle node and ~2.5 s on a loaded one; an overlay mount (unprivileged in a user namespace since
Linux 5.11) over a tree unpacked once costs ~0.05 s, and a step's writes go to its own upper
directory, removed with the attempt.  The tree is never written after it is made: every step sees
exactly the tarball's contents.

A tree is keyed by its tarball (path, size, mtime, inode: environments and layers are
content-addressed files, a re-made one is a new file), made under a temporary name and renamed
when complete, so a maker killed half-way leaves nothing that is used (its leftover is removed by
the next maker).  A step holds its tree in use (a shared ``flock`` on the tree's lock file) while
it runs; beyond ``keep`` trees, those no step holds are removed, least recently used first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

GLOBAL_LOCK = ".trees.lock"
DEFAULT_KEEP = 2
"""Trees kept (each ~0.5 GB of tmpfs): the environment's lean layer and one more (a dependency
layer, or the environment of another distribution) stay warm."""


def tree_key(tarball: Path) -> str:
    st = tarball.stat()
    ident = f"{tarball.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


class UnpackedTrees:
    """The unpacked trees under ``root`` (a directory of the farm's own, on tmpfs at best).

    ``unpack(tarball, dest)`` makes ``dest`` (new) with the tarball's contents; ``remove(path)``
    removes a tree (its files belong to the builds' mapped users)."""

    def __init__(
        self,
        root: Path,
        unpack: Callable[[Path, Path], None],
        remove: Callable[[Path], None],
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self.root = root
        self.unpack = unpack
        self.remove = remove
        self.keep = keep

    @contextlib.contextmanager
    def _global(self) -> Iterator[None]:
        with (self.root / GLOBAL_LOCK).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def lower(self, tarball: Path) -> Iterator[Path]:
        """The tree of ``tarball`` (made now if missing), held in use until the block ends."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the builds' mapped root reaches the tree
        key = tree_key(tarball)
        tree = self.root / key
        with (self.root / f"{key}.lock").open("a") as held:
            fcntl.flock(held, fcntl.LOCK_SH)  # eviction passes over a tree in use
            with self._global():
                if not tree.is_dir():
                    partial = self.root / f".{key}.partial"
                    if partial.exists():  # a maker killed half-way
                        self.remove(partial)
                    self.unpack(tarball, partial)
                    os.rename(partial, tree)
                os.utime(held.name)  # least recently used goes first
            yield tree
        self.evict()

    def trees(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def evict(self) -> list[Path]:
        """Remove trees no step holds, least recently used first, until ``keep`` are left."""
        removed: list[Path] = []
        with self._global():

            def used(tree: Path) -> float:
                with contextlib.suppress(OSError):
                    return (self.root / f"{tree.name}.lock").stat().st_mtime
                return 0.0

            ordered = sorted(self.trees(), key=used)
            excess = len(ordered) - self.keep
            for tree in ordered:
                if excess <= 0:
                    break
                with (self.root / f"{tree.name}.lock").open("a") as lock:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a step runs on it
                    self.remove(tree)
                    removed.append(tree)
                    excess -= 1
        return removed
