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
:class:`~buildfarm.environments.tarballs.TarballDir` whose entries are named by their key (sha256
of environment digest + package list); a record holds what the layer holds, its size and sha256,
and its mtime is the last use (least recently used goes first).

A layer is checked (size and sha256) before every use; a corrupt or half-written one is removed
and made again, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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
        is removed."""
        layer = self._load(deps.key())
        if layer is None:
            return None
        if layer.deps != deps or not self.check(layer):
            self._remove(layer.key)
            return None
        with contextlib.suppress(OSError):
            os.utime(self._meta_path(layer.key))  # least recently used goes first
        return layer

    def ensure(self, deps: DependencySet, make: MakeLayer) -> tuple[Layer, bool]:
        """(the layer of ``deps``, whether it was found): made with ``make`` when missing or
        corrupt, then the least recently used others are evicted to fit ``max_bytes``."""
        found = self.find(deps)
        if found is not None:
            return found, True
        with self._locked():
            found = self.find(deps)  # another node may have made it while we waited
            if found is not None:
                return found, True
            made = self._make(deps, make)
            self._evict(keep={made.key})
        return made, False

    def _make(self, deps: DependencySet, make: MakeLayer) -> Layer:
        key = deps.key()
        with self._making() as work:
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
        """Remove least recently used layers until the rest fit ``max_bytes`` (under the lock).
        A step already unpacking a removed layer keeps reading it (the file lives until closed)."""
        removed = []
        layers = self.entries()
        total = sum(layer.size for layer in layers)
        for layer in reversed(layers):  # least recently used first
            if total <= self.max_bytes:
                break
            if layer.key in keep:
                continue
            self._remove(layer.key)
            total -= layer.size
            removed.append(layer)
        return removed

    def prune(self, live_environments: Iterable[str], min_age_seconds: float = 0.0) -> list[Layer]:
        """Remove the layers of environments no longer in ``live_environments`` (pruned: no step
        can name them again) and not used for ``min_age_seconds``, then what exceeds the size
        bound, and tarballs left without their entry; returns what was removed."""
        live = set(live_environments)
        removed = []
        now = time.time()
        with self._locked():
            for layer in self.entries():
                if layer.deps.environment not in live and now - layer.last_used >= min_age_seconds:
                    self._remove(layer.key)
                    removed.append(layer)
            removed += self._evict(keep=set())
            self._remove_unrecorded()
        return removed
