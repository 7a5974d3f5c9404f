"""The farm's cache of build environments: tarballs named by their own sha256.

The cache directory (shared by the farm's nodes on one machine) is a
:class:`~buildfarm.environments.tarballs.TarballDir` whose entries are named by their digest
(``<digest>.tar``, ``<digest>.tar.sha256``, ``<digest>.json``: what it was made from), plus
``current-<recipe key>``, the digest of the recipe's current environment.

An entry is used only after its digest is checked: a truncated, corrupt or half-written tarball
is removed and, when it was a recipe's current environment, made again.  Creation writes into a
temporary directory and renames, so a maker killed halfway leaves no entry, only a ``.new-*``
directory that the next maker removes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from buildfarm.environments.mmdebstrap import make_tarball
from buildfarm.environments.spec import EnvironmentSpec
from buildfarm.environments.tarballs import TarballDir, file_digest
from buildfarm.model.errors import PermanentError

Progress = Callable[[str], None]


class Maker(Protocol):
    def __call__(
        self, spec: EnvironmentSpec, dest: Path, proxy: str | None = None, progress: Progress | None = None
    ) -> str: ...


class EnvironmentGone(PermanentError):
    """The environment a step's input key names is no longer in the cache (pruned or corrupt)."""


@dataclass(frozen=True)
class Environment:
    """One made environment: its tarball, what it was made from, and whether it is current."""

    digest: str
    path: Path
    spec: EnvironmentSpec
    created: str  # ISO 8601, UTC
    size: int  # bytes
    mirror_date: str  # the Date of the mirror's Release file its apt lists come from ("" unknown)
    current: bool = False

    @property
    def short(self) -> str:
        return self.digest[:12]


class EnvironmentCache(TarballDir):
    """Make, find, check and prune environments in ``root``.

    ``maker`` writes one tarball (mmdebstrap; tests may give a cheaper real maker); ``proxy`` is
    the farm's package cache that makers fetch through.
    """

    def __init__(self, root: Path, maker: Maker = make_tarball, proxy: str | None = None) -> None:
        super().__init__(root)
        self.maker = maker
        self.proxy = proxy

    # -- reading

    def _pointer(self, spec: EnvironmentSpec) -> Path:
        return self.root / f"current-{spec.key()}"

    def _current_digests(self) -> set[str]:
        found = set()
        for pointer in self.root.glob("current-*"):
            with contextlib.suppress(OSError):
                found.add(pointer.read_text().strip())
        return found

    def _load(self, digest: str, current: set[str]) -> Environment | None:
        try:
            meta = json.loads(self._meta_path(digest).read_text())
            return Environment(
                digest=digest,
                path=self._tar_path(digest),
                spec=EnvironmentSpec.from_dict(meta["spec"]),
                created=str(meta["created"]),
                size=int(meta["size"]),
                mirror_date=str(meta.get("mirror_date", "")),
                current=digest in current,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def entries(self) -> list[Environment]:
        """Every entry, newest first (not checked: :meth:`get` checks before use)."""
        if not self.root.is_dir():
            return []
        current = self._current_digests()
        entries = [self._load(p.stem, current) for p in self.root.glob("*.json")]
        return sorted(
            (e for e in entries if e is not None), key=lambda e: (e.created, e.current), reverse=True
        )

    def check(self, env: Environment) -> bool:
        """The tarball is whole: its size as recorded and its sha256 its name."""
        return self._whole(env.path, env.size, env.digest)

    def get(self, digest: str) -> Environment:
        """The checked environment ``digest``; a corrupt one is removed and reported gone."""
        env = self._load(digest, self._current_digests())
        corrupt = env is not None and not self.check(env)
        if corrupt:  # only a registered entry: a tarball without its record may be one being made
            self._remove(digest)
        if env is None or corrupt:
            raise EnvironmentGone(
                f"build environment {digest[:12]} is no longer in {self.root} (pruned, or found "
                "corrupt and removed): submit the build again to use the current one"
            )
        return env

    def current(self, spec: EnvironmentSpec) -> Environment | None:
        """The recipe's current environment, checked; None if there is none or it was corrupt."""
        try:
            digest = self._pointer(spec).read_text().strip()
        except OSError:
            return None
        try:
            return self.get(digest)
        except EnvironmentGone:
            return None

    # -- making

    def ensure(self, spec: EnvironmentSpec, progress: Progress | None = None) -> Environment:
        """The recipe's current environment, made first if there is none (or it was corrupt)."""
        found = self.current(spec)
        if found is not None:
            return found
        with self._locked():
            found = self.current(spec)  # another node may have made it while we waited
            return found if found is not None else self._make(spec, progress)

    def refresh(self, spec: EnvironmentSpec, progress: Progress | None = None) -> Environment:
        """Make the recipe afresh (new security updates) and make it current.  An unchanged
        mirror gives the same bytes, so the same digest: the old entry is simply kept."""
        with self._locked():
            return self._make(spec, progress)

    def _make(self, spec: EnvironmentSpec, progress: Progress | None) -> Environment:
        with self._making() as work:
            tmp = work / "environment.tar"
            mirror_date = self.maker(spec, tmp, self.proxy, progress)
            digest = file_digest(tmp)
            size = tmp.stat().st_size
            meta = {
                "spec": spec.as_dict(),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "size": size,
                "mirror_date": mirror_date,
            }
            self._add(work, tmp, digest, meta)
            (work / "pointer").write_text(digest + "\n")
            os.replace(work / "pointer", self._pointer(spec))
        if progress:
            progress(f"build environment {digest[:12]} ready ({size >> 20} MiB)")
        return self.get(digest)

    # -- removing

    def prune(self, keep: Iterable[str] = (), min_age_seconds: float = 0.0) -> list[Environment]:
        """Remove every environment that is not current, whose digest is not in ``keep`` (the
        environments kept builds name) and that is older than ``min_age_seconds`` (the cache is
        shared by the machine's farms: another farm's build may have just named it); returns what
        was removed."""
        kept = set(keep)
        removed = []
        now = datetime.now(UTC)
        with self._locked():
            for env in self.entries():
                young = (now - datetime.fromisoformat(env.created)).total_seconds() < min_age_seconds
                if not env.current and env.digest not in kept and not young:
                    self._remove(env.digest)
                    removed.append(env)
            self._remove_unrecorded()
        return removed
