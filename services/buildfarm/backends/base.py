"""The interfaces every storage backend implements; the engine sees only these.

The local profile uses :mod:`buildfarm.backends.fs` (a directory) and
:mod:`buildfarm.backends.aptrepo` (plain APT repositories made with apt-ftparchive);
production plugs in S3 and Pulp behind the same two protocols.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SHA256_HEX_LENGTH = 64


@dataclass(frozen=True)
class ObjectRef:
    """A content-addressed object: the same bytes always have the same ref, stored once."""

    sha256: str
    size: int


@dataclass(frozen=True)
class BuildRef:
    """What a repository backend needs to know about a build to place its packages."""

    build_id: int
    project: str
    branch: str
    kind: str  # release | nightly | on-demand | personal
    user: str


@dataclass(frozen=True)
class PackageFile:
    """A built package ready to publish: its name in the repository, its hash and a local copy."""

    filename: str
    sha256: str
    size: int
    path: Path


@dataclass(frozen=True)
class AptSource:
    """One apt sources line. ``suite`` is ``./`` for a flat repository (then no components)."""

    url: str
    suite: str = "./"
    components: tuple[str, ...] = ()
    trusted: bool = True

    def line(self) -> str:
        options = "[trusted=yes] " if self.trusted else ""
        parts = ["deb", f"{options}{self.url}", self.suite, *self.components]
        return " ".join(parts)


class LogWriter(Protocol):
    """Appends a step's log while it runs; every line is readable by a follower at once."""

    def write_line(self, line: str) -> None: ...

    def close(self) -> None: ...


class ArtifactStore(Protocol):
    """Content-addressed objects (sha256), per-build manifests and per-step logs."""

    def check(self) -> None:
        """At start: raise one clear error if the store cannot be used (unreachable, no bucket)."""
        ...

    def put_file(self, path: Path) -> ObjectRef:
        """Store a file under its sha256 (once, however many times it is put)."""
        ...

    def put_bytes(self, data: bytes) -> ObjectRef: ...

    def has(self, sha256: str) -> bool: ...

    def fetch(self, sha256: str, dest: Path) -> None:
        """Write the object to ``dest``; raise if it is missing or its bytes do not match."""
        ...

    def open_log(self, key: str) -> LogWriter:
        """Open the log ``key`` (``logs/<build>/<step>/<attempt>.log``) for appending."""
        ...

    def read_log(self, key: str, offset: int = 0) -> tuple[bytes, int]:
        """Return the log's bytes from ``offset`` and the next offset (for ``--follow``)."""
        ...

    def log_location(self, key: str) -> str:
        """Where a person can read the log (a path locally, a presigned URL on S3)."""
        ...

    def put_build_manifest(self, build_id: int, data: dict[str, object]) -> None: ...

    def get_build_manifest(self, build_id: int) -> dict[str, object] | None: ...


class PackageRepository(Protocol):
    """One APT repository per project/branch: a staging view while a build runs, then publication.

    ``publish`` is atomic: an apt client sees either the previous state or the whole new build,
    never a half-published one.  Only a successful, non-personal build moves ``latest``.
    """

    def check(self) -> None:
        """At start: raise one clear error if the repository cannot be used (unreachable, bad login)."""
        ...

    def stage(self, build: BuildRef, packages: list[PackageFile]) -> AptSource:
        """Make the build's staging repository hold exactly ``packages``; return its apt source."""
        ...

    def drop_staging(self, build: BuildRef) -> None: ...

    def publish(self, build: BuildRef, packages: list[PackageFile], move_latest: bool) -> AptSource:
        """Publish the build's own distribution and, if ``move_latest``, switch ``latest`` to it."""
        ...

    def sources(self, project: str, branch: str, build_id: int | None = None) -> AptSource:
        """The apt source of a branch's ``latest`` (or of one build); raises NotFoundError."""
        ...
