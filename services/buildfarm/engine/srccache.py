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

The tree key needs the tree hash and source format, and the planner the tree's ``debian/control``
and changelog: reading and parsing every file of thousands of unchanged trees took most of a
no-change re-run.  So each tree's hash, source info and format are remembered too
(``trees.json``), with the tree's *stat signature*: every entry's path, mode, size, inode, mtime
and ctime, as git's index keeps them.
A tree whose signature is unchanged is not read again.  Writing a file always changes its ctime
(which no tool can set back), so a changed tree never matches; and as in git, a tree with an
entry changed in the last :data:`RACY_SECONDS` before it was read is not remembered (a change in
the same clock tick as the read could leave its times as they were).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from buildfarm.engine.context import FarmContext
from buildfarm.engine.dpkgsource import Signature, dpkg_source_path, script_signature
from buildfarm.model.debsource import file_sha256, tree_format
from buildfarm.model.errors import BuildfarmError
from buildfarm.model.planner import SourceInfo, read_source_info
from buildfarm.model.sources import VCS_DIRS, tree_hash

log = logging.getLogger(__name__)

CACHE_DIR = "srcpkg-cache"
TREES_FILE = "trees.json"
KEYS_FILE = "keys.json"
"""Every remembered tree key's entry in one file: a submit of thousands of trees reads it once,
not one small file each (those stay: a key a concurrent save dropped is read from its own)."""
_KEYS_VERSION = 1
RACY_SECONDS = 2.0
"""A tree with an entry changed this recently before it was read is not remembered."""
MAX_TREES = 50_000
"""Trees remembered at most; beyond it only those of the last submit are kept."""
_KEY_VERSION = b"buildfarm-srcpkg-cache-v1\0"
_TREES_VERSION = 2  # 2: the source format too


_VERSION_LOCK = threading.Lock()


def dpkg_source_version() -> str:
    """The first line of ``dpkg-source --version`` (a new dpkg may pack differently), asked once
    per process and ``dpkg-source`` file: the packing threads that ask at once wait for the one
    run (~0.1 CPU s), and an upgrade that replaces the file (its
    :func:`~buildfarm.engine.dpkgsource.script_signature` changes) has it asked again, as the
    preloaded Perls that run it are started again (:mod:`buildfarm.engine.dpkgsource`)."""
    signature = script_signature(dpkg_source_path())
    with _VERSION_LOCK:
        return _dpkg_source_version(signature)


@functools.lru_cache(maxsize=1)
def _dpkg_source_version(_signature: Signature | None) -> str:
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
        self._trees: dict[str, list[object]] | None = None
        self._touched: dict[str, list[object]] = {}  # trees read (not remembered) since the last save
        self._hits: set[str] = set()  # trees found remembered since the last save
        self._keys: dict[str, object] | None = None  # the combined index of tree keys, as read
        self._learned: dict[str, dict[str, str]] = {}  # tree keys not in it, since the last save
        self._lock = threading.Lock()

    def tree_facts(self, tree: Path, origin: str) -> tuple[str, SourceInfo, str]:
        """The tree's hash, source info (:func:`~buildfarm.model.planner.read_source_info`,
        errors naming ``origin``) and source format, not read again when its stat signature is
        remembered."""
        started = time.time_ns()
        where, signature, newest, known = self._known(tree)
        if known is not None:
            return known
        info = read_source_info(tree, origin)
        fmt = tree_format(tree)
        digest = tree_hash(tree)
        if newest < started - int(RACY_SECONDS * 1e9):
            with self._lock:
                self._touched[where] = [signature, digest, dataclasses.asdict(info), fmt]
        return digest, info, fmt

    def known_facts(self, tree: Path) -> tuple[str, SourceInfo, str] | None:
        """:meth:`tree_facts` of a tree whose stat signature is remembered, else None (also for a
        tree that cannot be listed: :meth:`tree_facts` then says why).  A few ``stat`` calls a
        tree and no file read: a submit asks this of every tree in one thread first, as threads
        making these system calls pass the GIL back and forth (thousands of trees took twice as
        long in two threads as in one)."""
        try:
            return self._known(tree)[3]
        except OSError:
            return None

    def _known(self, tree: Path) -> tuple[str, str, int, tuple[str, SourceInfo, str] | None]:
        """(the tree's absolute path, its stat signature, its newest time, its remembered facts
        or None)."""
        where = str(tree.absolute())
        signature, newest = tree_signature(tree)
        with self._lock:
            if self._trees is None:
                self._trees = self._load_trees()
            entry = self._trees.get(where)
        if entry is not None and entry[0] == signature:
            info = _info_of(entry[2])
            if info is not None:
                with self._lock:
                    self._hits.add(where)
                return where, signature, newest, (str(entry[1]), info, str(entry[3]))
        return where, signature, newest, None

    def _load_trees(self) -> dict[str, list[object]]:
        try:
            body = json.loads((self.root / TREES_FILE).read_bytes())
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(body, dict)
            or body.get("v") != _TREES_VERSION
            or not isinstance(body.get("trees"), dict)
        ):
            return {}
        return {k: v for k, v in body["trees"].items() if isinstance(v, list) and len(v) == 4}

    def save_trees(self) -> None:
        """Remember the trees read since the last save (one atomic file; a concurrent submit's
        save may win, which costs the other's trees one read next time), and the tree keys
        packed or found one by one since (:meth:`lookup`).  Nothing is written when every tree
        and key was remembered already (a no-change re-run)."""
        self._save_keys()
        with self._lock:
            if not self._touched:
                self._hits = set()
                return
            trees = dict(self._trees or {})
            if len(trees) + len(self._touched) > MAX_TREES:
                trees = {where: trees[where] for where in self._hits if where in trees}
            trees.update(self._touched)
            self._trees = trees
            self._touched, self._hits = {}, set()
        self.root.mkdir(parents=True, exist_ok=True)
        # dumps, not dump: json's C encoder (dump to a file is the pure Python one, a second at
        # thousands of trees).
        data = json.dumps({"v": _TREES_VERSION, "trees": trees}, separators=(",", ":"))
        self._write(TREES_FILE, data)

    def _write(self, name: str, data: str) -> None:
        """Write ``data`` as the cache's file ``name`` (atomic)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
        os.replace(tmp, self.root / name)

    def _save_keys(self) -> None:
        with self._lock:
            if not self._learned:
                return
            keys = dict(self._keys or {})
            if len(keys) + len(self._learned) > MAX_TREES:
                keys = {}
            keys.update(self._learned)
            self._keys, self._learned = keys, {}
        self._write(KEYS_FILE, json.dumps({"v": _KEYS_VERSION, "keys": keys}, separators=(",", ":")))

    def _load_keys(self) -> dict[str, object]:
        try:
            body = json.loads((self.root / KEYS_FILE).read_bytes())
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(body, dict)
            or body.get("v") != _KEYS_VERSION
            or not isinstance(body.get("keys"), dict)
        ):
            return {}
        return dict(body["keys"])

    def key(self, fmt: str, digest: str, upstream: list[Path], beside_dsc: Path | None) -> str:
        """The tree key of a tree whose hash is ``digest``."""
        digest_ = hashlib.sha256(_KEY_VERSION)
        digest_.update(f"{dpkg_source_version()}\0{fmt}\0{digest}\n".encode())
        for path in sorted(upstream, key=lambda p: p.name):
            digest_.update(f"{path.name}\0{file_sha256(path)}\n".encode())
        if beside_dsc is not None and beside_dsc.is_file():
            digest_.update(f"dsc\0{beside_dsc.name}\0{file_sha256(beside_dsc)}\n".encode())
        return digest_.hexdigest()

    def lookup(self, key: str, what: str) -> tuple[str, str] | None:
        """(source key, sha256) remembered for ``key`` whose tarball the store still holds; None
        on a miss.  Read from the combined index of keys (:data:`KEYS_FILE`, read once), else
        from the key's own small file (then added to the index at :meth:`save_trees`)."""
        with self._lock:
            if self._keys is None:
                self._keys = self._load_keys()
            entry = self._keys.get(key)
        from_index = isinstance(entry, dict)
        try:
            if not isinstance(entry, dict):
                entry = json.loads((self.root / key).read_bytes())
            source, sha256 = str(entry["source_key"]), str(entry["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not from_index:
            with self._lock:
                self._learned[key] = {"source_key": source, "sha256": sha256}
        try:
            if not self.ctx.store.has(sha256):
                return None
        except BuildfarmError as exc:  # the store cannot say now: make it (and store it) again
            log.info("%s: source package cache entry %s not used: %s", what, key[:12], exc)
            return None
        return source, sha256

    def remember(self, key: str, source: str, sha256: str) -> None:
        """Remember the source package made for ``key`` (one atomic file; in the combined index
        from the next :meth:`save_trees`)."""
        entry = {"source_key": source, "sha256": sha256}
        self._write(key, json.dumps(entry))
        with self._lock:
            self._learned[key] = entry


def _info_of(raw: object) -> SourceInfo | None:
    """The remembered source info, or None for an entry of another shape (the tree is read)."""
    if not isinstance(raw, dict):
        return None
    try:
        return SourceInfo(
            name=str(raw["name"]),
            version=str(raw["version"]),
            binaries=tuple(str(b) for b in raw["binaries"]),
            build_depends=tuple(str(d) for d in raw["build_depends"]),
            architectures=tuple(str(a) for a in raw["architectures"]),
        )
    except (KeyError, TypeError):
        return None


def tree_signature(root: Path) -> tuple[str, int]:
    """(digest of every entry's path and stat, the newest mtime or ctime in ns) of the entries
    :func:`~buildfarm.model.sources.tree_hash` reads (version-control directories skipped)."""
    digest = hashlib.sha256(b"buildfarm-tree-stat-v1\0")
    newest = 0
    todo = [("", os.fspath(root))]
    while todo:
        rel, directory = todo.pop()
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            meta = entry.stat(follow_symlinks=False)
            name = f"{rel}{entry.name}"
            digest.update(
                f"{name}\0{meta.st_mode}\0{meta.st_size}\0{meta.st_ino}\0{meta.st_dev}\0"
                f"{meta.st_mtime_ns}\0{meta.st_ctime_ns}\n".encode("utf-8", "surrogateescape")
            )
            newest = max(newest, meta.st_mtime_ns, meta.st_ctime_ns)
            if stat.S_ISDIR(meta.st_mode) and entry.name not in VCS_DIRS:
                todo.append((f"{name}/", entry.path))
    return digest.hexdigest(), newest
