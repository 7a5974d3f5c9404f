"""The artifact store of the local profile: content-addressed objects, manifests and logs in a directory.

Production keeps the same three things in S3; locally a directory is enough, as long as every
write is atomic (readers and concurrent writers from other processes only ever see whole files)
and logs are readable line by line while a step still writes them.

Layout under ``root``::

    objects/sha256/<first 2 hex>/<sha256>   one file per distinct content, read-only
    objects/tmp/                            temp files, renamed into place (same filesystem)
    objects/corrupt/                        objects whose bytes no longer match their name
    builds/<id>/manifest.json               what was asked for a build
    <key>                                   logs, e.g. logs/<build>/<step>/<attempt>.log

An object's mtime is when it was last put: putting stored content again touches it, so the
retention sweep (``delete_objects(older_than=...)``) never collects an object being uploaded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, BinaryIO

from buildfarm.backends.base import DeleteResult, ObjectRef
from buildfarm.model.errors import NotFoundError, PermanentError

CHUNK_BYTES = 1024 * 1024
"""Read/write granularity when hashing and copying: big enough for speed, small enough for memory."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_RESERVED_TOP = frozenset({"objects", "builds"})
"""Top-level directories a log key must not write into: they belong to objects and manifests."""


def _check_sha256(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise PermanentError(f"{sha256!r} is not a sha256 (64 lower-case hex digits)")
    return sha256


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable: the new directory entry survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _atomic_writer(
    target: Path, tmp_dir: Path, mode: int = 0o644, *, durable: bool = True
) -> Iterator[BinaryIO]:
    """Yield a temp file in ``tmp_dir``; on success fsync it and rename it onto ``target``
    (without ``durable``, no fsync of the file nor of its directory: a copy for a reader that
    needs it whole, not kept across a crash).

    ``tmp_dir`` must be on the same filesystem as ``target`` so the rename is atomic. On error
    the temp file is removed and ``target`` is untouched.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix=".tmp-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        tmp.chmod(mode)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


def _copy_hashing(source: IO[bytes], dest: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK_BYTES):
        digest.update(chunk)
        dest.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _touch(path: Path) -> bool:
    """Set ``path``'s mtime to now if it exists (a stored object put again); whether it exists."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def file_sha256(path: Path) -> tuple[str, int]:
    """The sha256 and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class FsLogWriter:
    """Appends lines to one log file, flushing each so a follower sees it at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Append mode: a retried writer never overwrites what an earlier one wrote.
        self._handle: BinaryIO | None = path.open("ab")
        self.path = path

    def write_line(self, line: str) -> None:
        if self._handle is None:
            raise PermanentError(f"log {self.path} is closed")
        # One write call per line, so a follower never sees half a line from a buffered split.
        self._handle.write(line.rstrip("\n").encode("utf-8", "replace") + b"\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FsLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FsArtifactStore:
    """:class:`~buildfarm.backends.base.ArtifactStore` on a local directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self._objects = self.root / "objects" / "sha256"
        self._tmp = self.root / "objects" / "tmp"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PermanentError(f"artifact store {self.root} cannot be created: {exc.strerror}") from exc
        if not os.access(self.root, os.W_OK):
            raise PermanentError(f"artifact store {self.root} is not writable")

    # -- objects ---------------------------------------------------------------------------

    def object_path(self, sha256: str) -> Path:
        """Where the object lives on disk (FS only: lets the local repository hardlink it)."""
        _check_sha256(sha256)
        return self._objects / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        # A string path: a re-run asks this of thousands of objects (at submit, then at release).
        _check_sha256(sha256)
        return os.path.isfile(os.path.join(self._objects, sha256[:2], sha256))

    def put_file(self, path: Path) -> ObjectRef:
        # Hash first: content that is already stored costs one read and no write.
        sha256, size = file_sha256(path)
        target = self.object_path(sha256)
        if _touch(target):
            return ObjectRef(sha256, size)
        with path.open("rb") as source, _atomic_writer(target, self._tmp, 0o444) as dest:
            copied_sha, copied_size = _copy_hashing(source, dest)
            if copied_sha != sha256:
                raise PermanentError(f"{path} changed while it was being stored; put it again when complete")
        return ObjectRef(sha256, copied_size)

    def put_bytes(self, data: bytes) -> ObjectRef:
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.object_path(sha256)
        if not _touch(target):
            # Two processes may both get here: each renames its own complete temp file over the
            # other's identical one, so readers only ever see the whole content.
            with _atomic_writer(target, self._tmp, 0o444) as dest:
                dest.write(data)
        return ObjectRef(sha256, len(data))

    def fetch(self, sha256: str, dest: Path) -> None:
        """A copy of the object at ``dest``, whole or not at all, not flushed to the disk: every
        caller reads it and drops it (a step's source in its work directory, the sources of a
        publication in its scratch), and what it makes of it is stored durably by its own writer.
        The two fsyncs of each copy were ~3 ms of a step on an idle disk, 10 ms and more on a busy
        one, and a publication fetches every source of its build."""
        source_path = self.object_path(sha256)
        try:
            source = source_path.open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"artifact {sha256} is not in the store {self.root}") from None
        dest = Path(dest)
        with source, _atomic_writer(dest, dest.parent, durable=False) as out:
            actual, _ = _copy_hashing(source, out)
            if actual != sha256:
                self._quarantine(source_path)
                raise PermanentError(
                    f"artifact {sha256} in {self.root} is corrupt (its bytes hash to {actual}); "
                    "it was moved to objects/corrupt and must be stored again"
                )

    def _quarantine(self, path: Path) -> None:
        """Move a corrupt object aside so ``has`` stops reporting it and a new put can heal it."""
        corrupt = self.root / "objects" / "corrupt"
        corrupt.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # another reader moved it first
            os.replace(path, corrupt / f"{path.name}.{time.time_ns()}")

    def object_size(self, sha256: str) -> int | None:
        try:
            return self.object_path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def delete_objects(self, sha256s: Iterable[str], *, older_than: datetime) -> DeleteResult:
        if older_than.tzinfo is None:
            raise PermanentError("delete_objects needs an aware datetime (UTC), not a naive one")
        deleted = freed = recent = 0
        cutoff = older_than.timestamp()
        self._tmp.mkdir(parents=True, exist_ok=True)
        for sha256 in sha256s:
            path = self.object_path(sha256)
            try:
                if path.stat().st_mtime >= cutoff:
                    recent += 1  # put again lately: an upload may be in flight
                    continue
                # Moved aside, then judged again: a put that touched it just before the move is
                # seen (the object goes back); a put after the move finds nothing and stores it anew.
                aside = self._tmp / f".deleting-{sha256}.{time.time_ns()}"
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            stat = aside.stat()
            if stat.st_mtime >= cutoff:
                recent += 1  # put again lately: an upload may be in flight
                os.replace(aside, path)
                continue
            aside.unlink()
            deleted += 1
            freed += stat.st_size
        return DeleteResult(deleted, freed, recent)

    # -- logs ------------------------------------------------------------------------------

    def _log_path(self, key: str) -> Path:
        parts = key.split("/")
        if (
            not key
            or key.startswith("/")
            or "\\" in key
            or "\0" in key
            or any(part in ("", ".", "..") for part in parts)
            or parts[0] in _RESERVED_TOP
        ):
            raise PermanentError(
                f"invalid log key {key!r}: it must be a relative path without '..', '.' or empty parts, "
                "outside objects/ and builds/"
            )
        return self.root.joinpath(*parts)

    def open_log(self, key: str) -> FsLogWriter:
        return FsLogWriter(self._log_path(key))

    def read_log(self, key: str, offset: int = 0) -> tuple[bytes, int]:
        if offset < 0:
            raise PermanentError(f"log offset must be >= 0, not {offset}")
        try:
            with self._log_path(key).open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            # Not started yet: a follower keeps polling from the same offset.
            return b"", offset
        return data, offset + len(data)

    def log_location(self, key: str) -> str:
        return str(self._log_path(key))

    def delete_log(self, key: str) -> int:
        path = self._log_path(key)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        self._remove_empty_parents(path.parent)
        return size

    def _remove_empty_parents(self, directory: Path) -> None:
        """Remove ``directory`` and its parents up to (not including) the root while they are empty."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone): stop here
                return
            directory = directory.parent

    # -- build manifests -------------------------------------------------------------------

    def _manifest_path(self, build_id: int) -> Path:
        if isinstance(build_id, bool) or not isinstance(build_id, int) or build_id < 0:
            raise PermanentError(f"invalid build id {build_id!r}")
        return self.root / "builds" / str(build_id) / "manifest.json"

    def put_build_manifest(self, build_id: int, data: dict[str, object]) -> None:
        target = self._manifest_path(build_id)
        # Compact: json's C encoder (with indent, the pure Python one: a second at 5000 packages).
        encoded = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
        with _atomic_writer(target, target.parent) as out:
            out.write(encoded)

    def delete_build_manifest(self, build_id: int) -> None:
        path = self._manifest_path(build_id)
        path.unlink(missing_ok=True)
        self._remove_empty_parents(path.parent)

    def get_build_manifest(self, build_id: int) -> dict[str, object] | None:
        try:
            raw = self._manifest_path(build_id).read_bytes()
        except FileNotFoundError:
            return None
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise PermanentError(f"manifest of build {build_id} in {self.root} is not a JSON object")
        return data
