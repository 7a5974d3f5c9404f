"""The farm's cache of build environments: tarballs named by their own sha256.

Layout of the cache directory (shared by the farm's nodes on one machine)::

    <digest>.tar           the environment, content-addressed
    <digest>.tar.sha256    "<size>:<mtime_ns> <digest>": hashing ~0.5 GB takes seconds, so the
                           full check runs again only when the file changed
    <digest>.json          what it was made from; the entry exists once this file does
    current-<recipe key>   the digest of the recipe's current environment
    .new-<pid>-<random>/   an environment being made (never read; removed if its maker died)
    .lock                  held while making, refreshing or pruning (one maker at a time)

An entry is used only after its digest is checked: a truncated, corrupt or half-written tarball
is removed and, when it was a recipe's current environment, made again.  Creation writes into a
temporary directory and renames, so a maker killed halfway leaves no entry, only a ``.new-*``
directory that the next maker removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from buildfarm.environments.mmdebstrap import make_tarball
from buildfarm.environments.spec import EnvironmentSpec
from buildfarm.model.errors import PermanentError

Progress = Callable[[str], None]


class Maker(Protocol):
    def __call__(
        self, spec: EnvironmentSpec, dest: Path, proxy: str | None = None, progress: Progress | None = None
    ) -> str: ...


class EnvironmentGone(PermanentError):
    """The environment a step's input key names is no longer in the cache (pruned or corrupt)."""


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


class EnvironmentCache:
    """Make, find, check and prune environments in ``root``.

    ``maker`` writes one tarball (mmdebstrap; tests may give a cheaper real maker); ``proxy`` is
    the farm's package cache that makers fetch through.
    """

    def __init__(self, root: Path, maker: Maker = make_tarball, proxy: str | None = None) -> None:
        self.root = root
        self.maker = maker
        self.proxy = proxy

    # -- reading

    def _meta_path(self, digest: str) -> Path:
        return self.root / f"{digest}.json"

    def _tar_path(self, digest: str) -> Path:
        return self.root / f"{digest}.tar"

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
        try:
            return env.path.stat().st_size == env.size and file_digest(env.path) == env.digest
        except OSError:
            return False

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

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._remove_orphans()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_orphans(self) -> None:
        """Under the lock no one else is making anything: every ``.new-*`` is a dead maker's."""
        for leftover in self.root.glob(".new-*"):
            shutil.rmtree(leftover, ignore_errors=True)

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
        work = self.root / f".new-{os.getpid()}-{secrets.token_hex(4)}"
        work.mkdir()
        try:
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
            os.replace(tmp, self._tar_path(digest))
            os.replace(
                work / "environment.tar.sha256", self._tar_path(digest).with_name(f"{digest}.tar.sha256")
            )
            (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            os.replace(work / "meta.json", self._meta_path(digest))  # the entry exists from here on
            (work / "pointer").write_text(digest + "\n")
            os.replace(work / "pointer", self._pointer(spec))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if progress:
            progress(f"build environment {digest[:12]} ready ({size >> 20} MiB)")
        return self.get(digest)

    # -- removing

    def _remove(self, digest: str) -> None:
        self._meta_path(digest).unlink(missing_ok=True)  # first: no half entry is ever listed
        self._tar_path(digest).unlink(missing_ok=True)
        self.root.joinpath(f"{digest}.tar.sha256").unlink(missing_ok=True)

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
            for tar in self.root.glob("*.tar"):  # a tarball without its entry (a maker died after rename)
                if not self._meta_path(tar.stem).exists():
                    self._remove(tar.stem)
        return removed
