"""The interfaces every storage backend implements; the engine sees only these.

The local profile uses :mod:`buildfarm.backends.fs` (a directory) and
:mod:`buildfarm.backends.aptrepo` (plain APT repositories made with apt-ftparchive);
production plugs in S3 and Pulp behind the same two protocols.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

from buildfarm.backends.signing import SigningKey
from buildfarm.model.errors import NotFoundError
from buildfarm.model.settings import MirrorConfig
from buildfarm.model.types import AptSource as AptSource  # noqa: PLC0414  (part of this interface)
from buildfarm.model.types import BuildKind
from buildfarm_client.models import MirrorSyncOut

SHA256_HEX_LENGTH = 64


@dataclass(frozen=True)
class ObjectRef:
    """A content-addressed object: the same bytes always have the same ref, stored once."""

    sha256: str
    size: int


@dataclass(frozen=True)
class DeleteResult:
    """What :meth:`ArtifactStore.delete_objects` did: objects deleted, their bytes, and objects kept
    because they were written (or put again) after ``older_than``: an upload may still be in flight."""

    deleted: int
    freed_bytes: int
    skipped_recent: int


@dataclass(frozen=True)
class BuildRef:
    """What a repository backend needs to know about a build to place its packages."""

    build_id: int
    project: str
    branch: str
    kind: BuildKind
    user: str


@dataclass(frozen=True)
class StoredPackage:
    """A built package the artifact store holds: its name in the repository, its hash and size."""

    filename: str
    sha256: str
    size: int


Fetch = Callable[[str, Path], None]
"""Write the object with this sha256 to a path (the artifact store's ``fetch``): how a repository
gets the bytes of a :class:`StoredPackage` it does not hold yet."""


@dataclass(frozen=True)
class PackageFile(StoredPackage):
    """A built package ready to publish: its name in the repository, its hash and a local copy."""

    path: Path


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

    # -- deletion (retention: buildfarm.retention.sweep) ------------------------------------
    # ``put_file``/``put_bytes`` of an object that is already stored refresh its last-modified
    # time, so an object someone is uploading again is never older than the sweep's grace period.

    def object_size(self, sha256: str) -> int | None:
        """The stored object's size in bytes, or None if it is not stored."""
        ...

    def delete_objects(self, sha256s: Iterable[str], *, older_than: datetime) -> DeleteResult:
        """Delete the content objects last modified before ``older_than`` (an aware datetime);
        younger ones are kept and counted as ``skipped_recent``; missing ones are not counted."""
        ...

    def delete_log(self, key: str) -> int:
        """Delete the log ``key`` (every chunk of it); return the bytes freed (0 if it was absent)."""
        ...

    def delete_build_manifest(self, build_id: int) -> None:
        """Delete the build's manifest; absent is not an error."""
        ...


@runtime_checkable
class PresigningStore(ArtifactStore, Protocol):
    """An artifact store that hands out URLs, so a builder pod fetches and uploads with no credentials.

    Only the S3 store is one; the kubernetes runner needs it (the fs store has no URLs).
    """

    def presigned_url(self, sha256: str, expires: timedelta | None = None) -> str:
        """A GET URL of a content object (a step's source tarball)."""
        ...

    def presigned_put_url(self, key: str, expires: timedelta | None = None) -> str:
        """A PUT URL for an upload slot ``uploads/<build>/<step>/<attempt>.tar.gz``."""
        ...

    def fetch_key(self, key: str, dest: Path, max_bytes: int | None = None) -> None:
        """Download an upload slot; NotFoundError if nothing was uploaded to it."""
        ...

    def delete_key(self, key: str) -> None: ...


class PackageRepository(Protocol):
    """One APT repository per project/branch: a staging view while a build runs, then publication.

    ``publish`` is atomic: an apt client sees either the previous state or the whole new build,
    never a half-published one.  Only a successful, non-personal build moves ``latest``.
    """

    def check(self) -> None:
        """At start: raise one clear error if the repository cannot be used (unreachable, bad login,
        a signing key that cannot sign); log once that publications are unsigned when they are."""
        ...

    def signing_key(self) -> SigningKey | None:
        """The key published Release files are signed with (None: the farm publishes unsigned)."""
        ...

    def stage(self, build: BuildRef, packages: Sequence[StoredPackage], fetch: Fetch) -> AptSource:
        """Make the build's staging repository hold exactly ``packages`` (binary packages); return
        its apt source.  Called at every release of a step with all the build's packages so far:
        the repository fetches (``fetch``) only the ones it does not hold yet."""
        ...

    def drop_staging(self, build: BuildRef) -> None: ...

    def publish(self, build: BuildRef, packages: list[PackageFile], move_latest: bool) -> AptSource:
        """Publish the build's own distribution and, if ``move_latest``, switch ``latest`` to it."""
        ...

    def sources(self, project: str, branch: str, build_id: int | None = None) -> AptSource:
        """The apt source of a branch's ``latest`` (or of one build); raises NotFoundError."""
        ...

    def mirror_sources(self) -> list[AptSource]:
        """The apt sources of the configured 3rd-party mirrors that builds can use now (synced ones)."""
        ...

    def usable_mirrors(self) -> dict[str, AptSource]:
        """The same sources by mirror name, in configuration order (``buildfarm mirror list``)."""
        ...

    def sync_mirror(self, mirror: MirrorConfig) -> MirrorSyncOut:
        """Bring ``mirror`` up to date with its upstream (bounded wait); raise one clear error if
        not.  The answer's ``version`` is what was synced: Pulp's repository version number, or
        (local profile, where apt reads the 3rd party directly) the upstream Release's ``Date``;
        ``seconds`` how long the sync (or, locally, the check) took."""
        ...

    # -- deletion (retention: buildfarm.retention.sweep) ------------------------------------

    def expire_build(self, build: BuildRef) -> None:
        """Remove the build's own distribution (``<project>/<branch>/<id>``, or the personal one)
        and what only it served; idempotent (an absent build is done).

        Never touches mirrors, what another kept build still serves, or what ``latest`` serves:
        expiring the build ``latest`` points at raises :class:`~buildfarm.model.errors.PermanentError`
        and deletes nothing (the policy always keeps it, so asking is a bug worth a clear line).
        """
        ...

    def collect_garbage(self) -> int | None:
        """Free what no published build holds any more (Pulp: orphan cleanup; local: leftovers);
        return the bytes freed when known."""
        ...


@runtime_checkable
class VersionedPackageRepository(PackageRepository, Protocol):
    """A package repository that keeps versions of its own (Pulp).

    A build that crashed between writing its version and publishing it leaves one that no build
    row names; the retention sweep asks the repository itself to find them.
    """

    def sweep_leftover_versions(self, older_than: datetime, *, dry_run: bool) -> int:
        """Delete the versions of build repositories that no distribution serves, written before
        ``older_than``, each repository's latest excepted; return how many (``dry_run``: how many
        unpublished ones would go, deleting nothing)."""
        ...


@runtime_checkable
class LocalObjects(Protocol):
    """An artifact store whose objects are files on this machine (the local profile's directory):
    a reader may read an object where it lies, instead of a copy, and must never change it."""

    def object_path(self, sha256: str) -> Path:
        """Where the object ``sha256`` is (it may be missing, or its bytes damaged: check them)."""
        ...


@runtime_checkable
class BuildInputKeeper(Protocol):
    """A package repository that keeps build inputs too (Pulp: a file repository of them, kept
    forever); the local profile's artifact store alone keeps them there."""

    def keep_build_inputs(self, files: list[PackageFile]) -> int:
        """Hold ``files`` (upstream tarballs, .dsc files) for good; return how many were new."""
        ...


@runtime_checkable
class HoldsPackages(Protocol):
    """A package repository that can say which files of a build it holds already (the local
    profile: what ``latest`` carries).  The engine then fetches none of them to publish: it hands
    :meth:`PackageRepository.publish` the repository's own copies, so a no-change re-run of
    thousands of packages moves no bytes."""

    def held_files(self, build: BuildRef, files: Sequence[StoredPackage]) -> dict[str, Path]:
        """Where the repository keeps each of ``files`` it holds with the same name and sha256
        (by filename); the others are absent.  ``publish`` takes those paths as they are, and
        refuses one that vanished meanwhile with a temporary error (publishing again fetches it)."""
        ...


def require_signing_key(repo: PackageRepository) -> SigningKey:
    """The repository's signing key; NotFoundError (one line) when the farm publishes unsigned."""
    key = repo.signing_key()
    if key is None:
        raise NotFoundError("this farm publishes unsigned repositories: it has no signing key")
    return key


# -- the farm-side package cache (issue 15) ---------------------------------------------------------


@dataclass(frozen=True)
class DebianUpstream:
    """A Debian archive outside the farm that builds download packages from (the mirror the
    build environments are made from)."""

    url: str
    distribution: str
    architecture: str
    components: tuple[str, ...] = ("main",)


@dataclass(frozen=True)
class CacheRoute:
    """How apt reaches an upstream through the farm's package cache.

    ``mirror`` is what follows ``deb`` in a sources line, before the suite: the upstream's URL
    itself, or the cache's URL with its apt options (``[signed-by=/etc/apt/keyrings/x.asc]
    http://...``, ``[trusted=yes] http://...`` when unsigned); environments are made from it, so
    every chroot made from them fetches there.  ``proxy`` is an HTTP proxy apt fetches through
    (None: straight to ``mirror``).  ``key``: the armored public key the signed-by file holds
    (the environment carries it at that path: a chroot has none of the host's files)."""

    mirror: str
    proxy: str | None = None
    key: str | None = None


class PackageCache(Protocol):
    """Where N nodes and N steps fetch each ``.deb`` of an upstream once (issue 15 part 4):
    a caching proxy in front of the upstream (the local profile's apt-cacher-ng,
    :mod:`buildfarm.backends.aptproxy`) or a Pulp distribution of the upstream whose packages
    Pulp downloads on a client's first request and keeps (:mod:`buildfarm.backends.pulp.packagecache`).
    :mod:`buildfarm.wiring` picks one."""

    def route(self, upstream: DebianUpstream) -> CacheRoute:
        """How apt reaches ``upstream`` (made ready first if needed; cheap once it is)."""
        ...

    def refresh(self, upstream: DebianUpstream) -> CacheRoute:
        """Bring the cache's indexes of ``upstream`` up to date (a new environment takes the
        upstream's security updates), then :meth:`route`."""
        ...


# -- container registry (the farm's own) ---------------------------------------------------------


@dataclass(frozen=True)
class RawManifest:
    """A manifest as the registry served it."""

    body: bytes
    media_type: str

    @property
    def digest(self) -> str:
        """sha256 of the bytes (hex, no ``sha256:``): the manifest's digest in any registry."""
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class ImageParts:
    """Everything an image is made of in a registry, as digests without ``sha256:``."""

    manifest: RawManifest
    platforms: list[RawManifest]  # an index's image manifests, in its order ([] for one image)
    configs: list[str]  # the config blob of each image manifest
    blobs: list[str]  # configs and layers of every image manifest, each once, configs first per image


class ImageRegistry(Protocol):
    """The farm's container registry as the engine, retention and backups use it: built once from
    settings (:mod:`buildfarm.wiring`, :class:`buildfarm.backends.registrycopy.RegistryCopier`)
    and handed in.  Digests are ``sha256:<hex>`` unless a method says otherwise."""

    def copy_image(self, source_repository: str, ref: str, dest_repository: str, tag: str) -> str: ...

    def delete_manifest(self, repository: str, digest: str) -> bool: ...

    def collect_garbage(self) -> int | None: ...

    def image_parts(self, repository: str, digest: str) -> ImageParts: ...

    def fetch_blob(self, repository: str, digest: str, dest: Path) -> None: ...

    def has_blob(self, repository: str, digest: str) -> bool: ...

    def push_blob(self, repository: str, digest: str, path: Path) -> None: ...

    def put_manifest(self, repository: str, ref: str, manifest: RawManifest) -> None: ...


# -- backup targets -------------------------------------------------------------------------------


class BackupObjects(Protocol):
    """The part of an artifact store a backup uses: content objects only."""

    def check(self) -> None: ...

    def has(self, sha256: str) -> bool: ...

    def put_file(self, path: Path) -> ObjectRef: ...

    def put_bytes(self, data: bytes) -> ObjectRef: ...

    def fetch(self, sha256: str, dest: Path) -> None: ...


class BackupTarget(Protocol):
    @property
    def where(self) -> str:
        """The target in words (a path or ``s3://bucket/prefix``), for messages."""
        ...

    @property
    def objects(self) -> BackupObjects: ...

    def put_document(self, name: str, data: bytes) -> None: ...

    def get_document(self, name: str) -> bytes | None: ...
