"""The production artifact store: content-addressed objects, manifests and step logs in one S3 bucket.

Any S3 endpoint works (MinIO in the chart); only the ``minio`` SDK talks to it. Calls to the
store behave as :class:`buildfarm.backends.fs.FsArtifactStore` does for the same arguments
(same key rules and errors), with one difference: S3 objects are immutable, so a log line
becomes readable when its chunk is flushed (at most ``flush_seconds`` later), not at once.

Layout in the bucket::

    sha256/<first 2 hex>/<sha256>          one object per distinct content
    corrupt/<sha256>.<ns>                  objects whose bytes no longer matched their name
    builds/<id>/manifest.json              what was asked for a build
    uploads/<build>/<step>/<attempt>.tar.gz  upload slots: builder pods PUT their outputs here
    <key>/chunk-<NNNNNN>                   a log's chunks, numbered from 1, in write order
    <key>                                  the whole log, joined from its chunks (see log_location)

Logs are kept in :mod:`buildfarm.backends.s3logs`. Builder pods hold no credentials: they get
presigned URLs (:meth:`S3ArtifactStore.presigned_url` to fetch a source, :meth:`presigned_put_url`
to upload into a slot), and the worker reads and removes the slot with ``fetch_key``/``delete_key``.

Content objects are immutable, so their last-modified time says when they were last *put*:
putting content that is already stored copies the object onto itself (server-side, metadata
REPLACE), so the retention sweep, which deletes only objects last modified before its grace
period, never collects content an upload in flight is storing again.

Every call has the bounds of :class:`buildfarm.backends.s3bucket.S3Bucket` (retries of transient
failures, then one :class:`ServiceUnavailableError` naming the endpoint and bucket).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, BinaryIO, cast

from minio.commonconfig import REPLACE, CopySource

from buildfarm.backends.base import DeleteResult, ObjectRef
from buildfarm.backends.fs import CHUNK_BYTES, file_sha256
from buildfarm.backends.s3bucket import DEFAULT_PART_SIZE, URL_EXPIRY, RetryPolicy, S3Bucket
from buildfarm.backends.s3logs import (
    LOG_FLUSH_BYTES,
    LOG_FLUSH_LINES,
    LOG_FLUSH_SECONDS,
    S3Logs,
    S3LogWriter,
)
from buildfarm.model.errors import NotFoundError, PermanentError

__all__ = [
    "DEFAULT_PART_SIZE",
    "LOG_FLUSH_BYTES",
    "LOG_FLUSH_LINES",
    "LOG_FLUSH_SECONDS",
    "URL_EXPIRY",
    "RetryPolicy",
    "S3ArtifactStore",
    "S3LogWriter",
]

REPUT_MAX_BYTES = 64 * 1024
"""``put_bytes`` of stored content up to this size is simply put again (one request refreshes it,
~6 ms on moto); larger content is copied onto itself, server-side (a stat and a copy, ~18 ms)."""
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UPLOAD_KEY = re.compile(r"uploads(/[A-Za-z0-9_][A-Za-z0-9._+-]*)+")


def _check_sha256(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise PermanentError(f"{sha256!r} is not a sha256 (64 lower-case hex digits)")
    return sha256


def _check_upload_key(key: str) -> str:
    if not _UPLOAD_KEY.fullmatch(key) or "/." in key:
        raise PermanentError(
            f"invalid upload key {key!r}: it must be uploads/<plain names>, e.g. uploads/7/hello/1.tar.gz"
        )
    return key


@contextmanager
def _atomic_file(target: Path) -> Iterator[BinaryIO]:
    """A temp file next to ``target``, renamed onto it on success and removed on error; not
    flushed to the disk (a download is read and dropped by its caller, as
    :meth:`buildfarm.backends.fs.FsArtifactStore.fetch`'s copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _HashingReader:
    """Hands a file to the SDK while hashing what it reads, to catch a file changed after hashing."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


class S3ArtifactStore(S3Bucket):
    """:class:`~buildfarm.backends.base.ArtifactStore` on an S3 bucket (see :class:`S3Bucket`)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        retry: RetryPolicy = RetryPolicy(),
        flush_lines: int = LOG_FLUSH_LINES,
        flush_bytes: int = LOG_FLUSH_BYTES,
        flush_seconds: float = LOG_FLUSH_SECONDS,
        url_expiry: timedelta = URL_EXPIRY,
    ) -> None:
        super().__init__(
            endpoint,
            access_key,
            secret_key,
            bucket,
            secure=secure,
            region=region,
            part_size=part_size,
            retry=retry,
            url_expiry=url_expiry,
        )
        self._logs = S3Logs(
            self, flush_lines=flush_lines, flush_bytes=flush_bytes, flush_seconds=flush_seconds
        )

    # -- objects -------------------------------------------------------------------------------

    @staticmethod
    def object_name(sha256: str) -> str:
        return f"sha256/{_check_sha256(sha256)[:2]}/{sha256}"

    def has(self, sha256: str) -> bool:
        return self.size_of(self.object_name(sha256)) is not None

    def object_size(self, sha256: str) -> int | None:
        return self.size_of(self.object_name(sha256))

    def _refresh(self, name: str) -> bool:
        """Copy the stored object ``name`` onto itself, so its last-modified time is now; whether it
        exists. The SDK stats it first (and composes objects over 5 GiB): two requests, no bytes moved."""
        source = CopySource(self.bucket, name)
        try:
            self._call(
                f"refresh of {name}",
                lambda: self._client.copy_object(
                    self.bucket,
                    name,
                    source,
                    metadata={"Content-Type": "application/octet-stream"},
                    metadata_directive=REPLACE,
                ),
            )
        except NotFoundError:
            return False
        return True

    def put_file(self, path: Path) -> ObjectRef:
        # Hash first: content that is already stored costs one read and a server-side copy (its
        # last-modified time becomes now: see the module docstring), no upload.
        path = Path(path)
        sha256, size = file_sha256(path)
        name = self.object_name(sha256)
        if self._refresh(name):
            return ObjectRef(sha256, size)

        def upload() -> _HashingReader:
            with path.open("rb") as source:
                reader = _HashingReader(source)
                # The SDK types ``data`` as BinaryIO but only ever calls read().
                data = cast(BinaryIO, reader)
                self._client.put_object(self.bucket, name, data, size, part_size=self._part_size)
                return reader

        try:
            reader = self._call(f"upload of {path}", upload)
        except OSError as exc:  # the SDK reads exactly ``size`` bytes: a shrunk file ends early
            raise PermanentError(f"{path} could not be stored, did it change while read? {exc}") from exc
        if reader.digest.hexdigest() != sha256 or reader.size != size:
            self._call(f"removal of {name}", lambda: self._client.remove_object(self.bucket, name))
            raise PermanentError(f"{path} changed while it was being stored; put it again when complete")
        return ObjectRef(sha256, size)

    def put_bytes(self, data: bytes) -> ObjectRef:
        sha256 = hashlib.sha256(data).hexdigest()
        name = self.object_name(sha256)
        # Stored already: a small object is put again (one request, which also refreshes its
        # last-modified time), a large one copied onto itself. Two writers may both upload: S3
        # keeps one of two identical objects, readers see either.
        if len(data) <= REPUT_MAX_BYTES or not self._refresh(name):
            self.put_object_bytes(name, data)
        return ObjectRef(sha256, len(data))

    def delete_objects(self, sha256s: Iterable[str], *, older_than: datetime) -> DeleteResult:
        """Stat each object, then delete those last modified before ``older_than`` in batches.

        A put that refreshes an object between its stat and the batch DELETE (milliseconds) is
        not seen: S3 has no conditional delete. The grace period makes that window matter only
        for an upload that starts exactly as the sweep deletes content no kept build references.
        """
        if older_than.tzinfo is None:
            raise PermanentError("delete_objects needs an aware datetime (UTC), not a naive one")
        doomed: list[str] = []
        freed = recent = 0
        for sha256 in sha256s:
            name = self.object_name(sha256)
            found = self.stat(name)
            if found is None:
                continue
            if found.last_modified is not None and found.last_modified >= older_than:
                recent += 1  # put again lately: an upload may be in flight
                continue
            doomed.append(name)
            freed += int(found.size or 0)
        self.remove_names(doomed)
        return DeleteResult(len(doomed), freed, recent)

    def fetch(self, sha256: str, dest: Path) -> None:
        name = self.object_name(sha256)
        dest = Path(dest)

        def download() -> str:
            response = self._client.get_object(self.bucket, name)
            try:
                digest = hashlib.sha256()
                with _atomic_file(dest) as out:
                    for chunk in response.stream(CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
                    if digest.hexdigest() != sha256:
                        raise _CorruptError(digest.hexdigest())  # leaves ``dest`` untouched
                return digest.hexdigest()
            finally:
                response.close()
                response.release_conn()

        try:
            self._call(f"download of {name}", download)
        except NotFoundError:
            raise NotFoundError(f"artifact {sha256} is not in the store {self.where}") from None
        except _CorruptError as exc:
            self._quarantine(name)
            raise PermanentError(
                f"artifact {sha256} in {self.where} is corrupt (its bytes hash to {exc}); "
                "it was moved to corrupt/ and must be stored again"
            ) from None

    def _quarantine(self, name: str) -> None:
        """Move a corrupt object aside so ``has`` stops reporting it and a new put can heal it."""
        aside = f"corrupt/{name.rsplit('/', 1)[1]}.{time.time_ns()}"
        source = CopySource(self.bucket, name)
        self._call(f"copy of {name}", lambda: self._client.copy_object(self.bucket, aside, source))
        self._call(f"removal of {name}", lambda: self._client.remove_object(self.bucket, name))

    def presigned_url(self, sha256: str, expires: timedelta | None = None) -> str:
        """A URL that downloads the artifact without credentials (builder pods fetch sources so)."""
        name = self.object_name(sha256)
        if self.size_of(name) is None:
            raise NotFoundError(f"artifact {sha256} is not in the store {self.where}")
        return self.presign_get(name, expires)

    # -- upload slots ----------------------------------------------------------------------------

    def presigned_put_url(self, key: str, expires: timedelta | None = None) -> str:
        """A URL through which one builder pod uploads its outputs archive to ``uploads/...``.

        The uploader must send ``Content-Type: application/octet-stream`` (a form-encoded body is
        stored as empty by some S3 servers). Give ``expires`` the step's deadline plus a margin.
        """
        name = _check_upload_key(key)
        return self._call(
            f"presigning of {name}",
            lambda: self._client.presigned_put_object(self.bucket, name, expires or self._url_expiry),
        )

    def fetch_key(self, key: str, dest: Path, max_bytes: int | None = None) -> None:
        """Download the upload slot ``key`` to ``dest`` (atomically); NotFoundError if nothing came.

        ``max_bytes`` refuses a larger object before a byte is downloaded (the uploader is untrusted).
        """
        name = _check_upload_key(key)
        size = self.size_of(name)
        if size is None:
            raise NotFoundError(f"nothing was uploaded to {name} in {self.where}")
        if max_bytes is not None and size > max_bytes:
            raise PermanentError(f"{name} in {self.where} is {size} bytes, more than the {max_bytes} allowed")

        def download() -> None:
            response = self._client.get_object(self.bucket, name)
            try:
                with _atomic_file(Path(dest)) as out:
                    for chunk in response.stream(CHUNK_BYTES):
                        out.write(chunk)
            finally:
                response.close()
                response.release_conn()

        self._call(f"download of {name}", download)

    def delete_key(self, key: str) -> None:
        """Remove the upload slot ``key``; removing one that is not there is not an error."""
        name = _check_upload_key(key)
        self._call(f"removal of {name}", lambda: self._client.remove_object(self.bucket, name))

    # -- logs (chunked: see s3logs) --------------------------------------------------------------

    def open_log(self, key: str) -> S3LogWriter:
        return self._logs.open(key)

    def read_log(self, key: str, offset: int = 0) -> tuple[bytes, int]:
        return self._logs.read(key, offset)

    def log_location(self, key: str) -> str:
        """A presigned URL of the whole log, joined from what was flushed so far if still open."""
        return self._logs.location(key)

    def delete_log(self, key: str) -> int:
        """Remove every chunk of the log and the joined log; the bytes of the chunks (0 if absent)."""
        return self._logs.delete(key)

    # -- build manifests -----------------------------------------------------------------------

    @staticmethod
    def _manifest_name(build_id: int) -> str:
        if isinstance(build_id, bool) or not isinstance(build_id, int) or build_id < 0:
            raise PermanentError(f"invalid build id {build_id!r}")
        return f"builds/{build_id}/manifest.json"

    def put_build_manifest(self, build_id: int, data: dict[str, object]) -> None:
        # Compact: json's C encoder (with indent, the pure Python one: a second at 5000 packages).
        encoded = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
        self.put_object_bytes(self._manifest_name(build_id), encoded, "application/json")

    def delete_build_manifest(self, build_id: int) -> None:
        name = self._manifest_name(build_id)
        self._call(f"removal of {name}", lambda: self._client.remove_object(self.bucket, name))

    def get_build_manifest(self, build_id: int) -> dict[str, object] | None:
        try:
            raw = self.get_object_bytes(self._manifest_name(build_id))
        except NotFoundError:
            return None
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise PermanentError(f"manifest of build {build_id} in {self.where} is not a JSON object")
        return data


class _CorruptError(Exception):
    """Raised inside a download whose bytes do not match their name; carries the actual hash."""
