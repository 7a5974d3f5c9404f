"""Dependency layers: an environment with one resolved set of build dependencies preinstalled.

A package with a big Build-Depends set spends most of its setup installing the same -dev
packages every time.  A layer is the environment's tarball with exactly those packages installed
(:mod:`buildfarm.environments.layermaker`), named by what it holds: the environment's digest and
the sorted ``name:arch=version`` list resolved against that environment's apt lists
(:mod:`buildfarm.environments.resolve`).  The first step needing a set pays the install; every
later step of any package resolving to the same set starts from the layer.

Why a layer never enters an input key: the set is resolved with the same lists, the same dpkg
status and the same extra repositories sbuild's own resolver sees in the environment, and only
packages of the environment's own archive go in (the farm's staging packages are installed by
sbuild as before).  sbuild still resolves the Build-Depends inside the layer and finds them
installed, so the build runs among the same packages at the same versions as in the bare
environment: the layer is a cache of a state the step reaches anyway, and the key (environment
digest, sources) already determines it.

The layer directory (shared by the farm's nodes on one machine) is a
:class:`~buildfarm.environments.tarballs.TarballDir` with a lock per entry::

    <key>.tar            the layer (key: sha256 of environment digest + package list)
    <key>.tar.sha256     the file digest cache (as environments)
    <key>.json           what it holds, its size and sha256; the entry exists once this file does;
                         its mtime is the last use (least recently used goes first)
    .new-<key>-<pid>-<random>/
                         a layer being made (removed under its key's lock: its maker died)
    .lock-<key>          the layer's own lock: exclusive while it is made or removed, shared
                         while a step uses it (from its check to the end of its sbuild)
    .lock                held while evicting or pruning (short: no layer is made under it)

Two different layers are made at once; the same one only once (its makers queue on its lock and
the later ones find it made).  Eviction and prune pass over a layer in use: they take its lock
without waiting, and a step holding it shared keeps it.  A layer is checked (size and sha256)
before every use; a corrupt or half-written one is removed and made again, never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from prometheus_client import Counter

from buildfarm.environments.tarballs import TarballDir, file_digest

LAYER_LOOKUPS = Counter(
    "buildfarm_env_layer_lookups",
    "Steps that looked for a dependency layer, by result: hit (used as it was), miss (made now), "
    "none (nothing to preinstall, or fewer packages than env_layer_min_packages), "
    "failed (could not be made: the step ran in the bare environment)",
    ["result"],
    registry=None,  # registered by buildfarm.metrics.worker (the worker's /metrics)
)


@dataclass(frozen=True)
class DependencySet:
    """What a layer holds: the environment it extends and the packages installed on top."""

    environment: str  # the environment's digest
    packages: tuple[str, ...]  # "name:arch=version", the environment's archive packages only

    def __post_init__(self) -> None:
        object.__setattr__(self, "packages", tuple(sorted(set(self.packages))))

    def key(self) -> str:
        """The layer's name: sha256 of the environment digest and the sorted package list."""
        blob = json.dumps({"environment": self.environment, "packages": list(self.packages)})
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Layer:
    key: str
    path: Path
    deps: DependencySet
    size: int
    digest: str  # the tarball's sha256
    created: str  # ISO 8601, UTC
    last_used: float  # seconds since the epoch

    @property
    def short(self) -> str:
        return self.key[:12]


class LayerHold:
    """A layer in use: eviction and prune leave it until :meth:`release` (idempotent)."""

    def __init__(self, layer: Layer, hit: bool, handle: IO[str]) -> None:
        self.layer, self.hit, self._handle = layer, hit, handle

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # drops its shared lock

    def __enter__(self) -> LayerHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


MakeLayer = Callable[[Path], None]
"""Writes the layer's tarball at the given path (a temporary name inside the cache)."""


class LayerCache(TarballDir):
    """Find, make, check and evict dependency layers in ``root``, at most ``max_bytes`` in all."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        super().__init__(root)
        self.max_bytes = max_bytes

    def _load(self, key: str) -> Layer | None:
        meta_path = self._meta_path(key)
        try:
            meta = json.loads(meta_path.read_text())
            return Layer(
                key=key,
                path=self._tar_path(key),
                deps=DependencySet(str(meta["environment"]), tuple(str(p) for p in meta["packages"])),
                size=int(meta["size"]),
                digest=str(meta["sha256"]),
                created=str(meta["created"]),
                last_used=meta_path.stat().st_mtime,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def entries(self) -> list[Layer]:
        """Every layer, most recently used first (not checked)."""
        if not self.root.is_dir():
            return []
        found = [self._load(p.stem) for p in self.root.glob("*.json")]
        return sorted((e for e in found if e is not None), key=lambda e: e.last_used, reverse=True)

    def check(self, layer: Layer) -> bool:
        return self._whole(layer.path, layer.size, layer.digest)

    def find(self, deps: DependencySet) -> Layer | None:
        """The checked layer of ``deps`` (its use recorded), None if there is none; a corrupt one
        is removed (unless another step holds it)."""
        with self._key_lock(deps.key(), fcntl.LOCK_SH):
            found = self._find(deps)
        if found is None and self._load(deps.key()) is not None:
            self._remove_unused(deps.key())
        return found

    def _find(self, deps: DependencySet) -> Layer | None:
        """The checked layer of ``deps`` (its use recorded) or None, under the key's lock."""
        layer = self._load(deps.key())
        if layer is None or layer.deps != deps or not self.check(layer):
            return None
        with contextlib.suppress(OSError):
            os.utime(self._meta_path(layer.key))  # least recently used goes first
        return layer

    def ensure(self, deps: DependencySet, make: MakeLayer) -> tuple[Layer, bool]:
        """(the layer of ``deps``, whether it was found): :meth:`acquire`, released at once."""
        with self.acquire(deps, make) as hold:
            return hold.layer, hold.hit

    def acquire(self, deps: DependencySet, make: MakeLayer) -> LayerHold:
        """The layer of ``deps`` held in use until released: found, or made with ``make`` when
        missing or corrupt, then the least recently used others not in use are evicted to fit
        ``max_bytes``.  Only the makers of the same key wait for each other."""
        key = deps.key()
        while True:
            handle = self._open_locked(key, fcntl.LOCK_SH)
            found = self._find(deps)
            if found is not None:
                return LayerHold(found, True, handle)
            handle.close()
            handle = self._open_locked(key, fcntl.LOCK_EX)
            try:
                found = self._find(deps)  # another node may have made it while we waited
                made = found is None
                if found is None:
                    self._remove(key)  # a corrupt or half-written one
                    self._remove_leftovers(key)  # a dead maker's, under the key's lock
                    found = self._make(deps, make)
                # Held in use from here.  Converting a lock is no atomic step: an evictor may
                # take it in between, so the layer is looked up again (gone: made again).
                fcntl.flock(handle, fcntl.LOCK_SH)
            except BaseException:
                handle.close()
                raise
            if self._load(key) is None or not self._same_file(handle, key):
                handle.close()
                continue
            if made:
                with self._locked():
                    self._evict(keep={key})
            return LayerHold(found, not made, handle)

    def _lock_path(self, key: str) -> Path:
        return self.root / f".lock-{key}"

    def _same_file(self, handle: IO[str], key: str) -> bool:
        """``handle`` is still the key's lock file (not one removed with its layer meanwhile)."""
        try:
            return os.fstat(handle.fileno()).st_ino == self._lock_path(key).stat().st_ino
        except OSError:
            return False

    def _open_locked(self, key: str, mode: int) -> IO[str]:
        """The key's lock file, open and locked in ``mode`` (``LOCK_NB`` in it: BlockingIOError
        when another holds it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            handle = self._lock_path(key).open("a")
            try:
                fcntl.flock(handle, mode)
            except BaseException:
                handle.close()
                raise
            if self._same_file(handle, key):
                return handle
            handle.close()  # removed by the layer's remover while we waited: the new file

    @contextlib.contextmanager
    def _key_lock(self, key: str, mode: int) -> Iterator[IO[str]]:
        handle = self._open_locked(key, mode)
        try:
            yield handle
        finally:
            handle.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The directory's lock, without :class:`TarballDir`'s sweep of every ``.new-*``: layers
        of other keys are made meanwhile under their own locks (prune removes dead makers')."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_leftovers(self, key: str) -> None:
        for leftover in self.root.glob(f".new-{key}-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _make(self, deps: DependencySet, make: MakeLayer) -> Layer:
        key = deps.key()
        with self._making(key) as work:
            tmp = work / "layer.tar"
            make(tmp)
            meta = {
                "environment": deps.environment,
                "packages": list(deps.packages),
                "size": tmp.stat().st_size,
                "sha256": file_digest(tmp),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            self._add(work, tmp, key, meta)
        layer = self._load(key)
        if layer is None:  # removed by a prune of another process between rename and load
            raise OSError(f"dependency layer {key[:12]} vanished as it was made")
        return layer

    def _evict(self, keep: set[str]) -> list[Layer]:
        """Remove least recently used layers not in use until the rest fit ``max_bytes`` (under
        the lock)."""
        removed = []
        layers = self.entries()
        total = sum(layer.size for layer in layers)
        for layer in reversed(layers):  # least recently used first
            if total <= self.max_bytes:
                break
            if layer.key not in keep and self._remove_unused(layer.key):
                total -= layer.size
                removed.append(layer)
        return removed

    def _remove_unused(self, key: str) -> bool:
        """Remove the layer ``key`` unless a step uses it (or it is being made): whether it was."""
        try:
            handle = self._open_locked(key, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        with handle:
            self._remove(key)
            self._remove_leftovers(key)
            self._lock_path(key).unlink(missing_ok=True)  # under its lock: later lockers see a new file
        return True

    def prune(self, live_environments: Iterable[str], min_age_seconds: float = 0.0) -> list[Layer]:
        """Remove the layers of environments no longer in ``live_environments`` (pruned: no step
        can name them again) and not used for ``min_age_seconds``, then what exceeds the size
        bound, and tarballs left without their entry (none in use); returns what was removed."""
        live = set(live_environments)
        removed = []
        now = time.time()
        with self._locked():
            for layer in self.entries():
                stale = layer.deps.environment not in live and now - layer.last_used >= min_age_seconds
                if stale and self._remove_unused(layer.key):
                    removed.append(layer)
            removed += self._evict(keep=set())
            for tar in self.root.glob("*.tar"):
                if not self._meta_path(tar.stem).exists():
                    self._remove_unused(tar.stem)
            for leftover in self.root.glob(".new-*"):  # a dead maker's: its key's lock is free
                self._remove_dead_makings(leftover.name.split("-")[1])
            for lock in self.root.glob(".lock-*"):  # of layers removed by an older farm
                key = lock.name.removeprefix(".lock-")
                if not self._meta_path(key).exists():
                    self._remove_unused(key)
        return removed

    def _remove_dead_makings(self, key: str) -> None:
        try:
            handle = self._open_locked(key, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # being made (or in use): its maker cleans up
        with handle:
            self._remove_leftovers(key)
