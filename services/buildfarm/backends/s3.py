"""The production artifact store: content-addressed objects, manifests and step logs in one S3 bucket.

Any S3 endpoint works (MinIO in the chart); only the ``minio`` SDK talks to it. Calls to the
store behave as :class:`buildfarm.backends.fs.FsArtifactStore` does for the same arguments
(same key rules and errors), with one difference: S3 objects are immutable, so a log line
becomes readable when its chunk is flushed (at most ``flush_seconds`` later), not at once.

Layout in the bucket::

    sha256/<first 2 hex>/<sha256>          one object per distinct content
    corrupt/<sha256>.<ns>                  objects whose bytes no longer matched their name
    builds/<id>/manifest.json              what was asked for a build
    <key>/chunk-<NNNNNN>                   a log's chunks, numbered from 1, in write order
    <key>                                  the whole log, joined from its chunks (see log_location)

Transient failures (connection errors, timeouts, 5xx, SlowDown) are retried ``attempts`` times
with exponential backoff, then raise :class:`ServiceUnavailableError` naming the endpoint and
bucket; :attr:`RetryPolicy.bound` is the longest that takes. Every other S3 error is permanent.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, BinaryIO, TypeVar, cast

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import MAX_PART_SIZE, MIN_PART_SIZE

from buildfarm.backends.base import ObjectRef
from buildfarm.backends.fs import CHUNK_BYTES, file_sha256
from buildfarm.model.errors import BuildfarmError, NotFoundError, PermanentError, ServiceUnavailableError

DEFAULT_PART_SIZE = 16 * 1024 * 1024
"""Bytes per multipart part; larger files are uploaded in parts, 3 at a time (memory ~4 parts)."""

LOG_FLUSH_LINES = 1000
"""A log writer flushes a chunk after this many buffered lines (a chatty step: ~1 PUT per 1000 lines)."""
LOG_FLUSH_BYTES = 1024 * 1024
"""... or after this many buffered bytes, so a few huge lines cannot hold much memory."""
LOG_FLUSH_SECONDS = 2.0
"""... and every 2 s (a background thread), so ``--follow`` lags at most ~2 s and a crashed step
loses at most its last ~2 s of output; one PUT per 2 s per running step is cheap for S3."""

URL_EXPIRY = timedelta(days=7)
"""Presigned URLs live this long: the longest SigV4 allows, so `build show` links last a week."""

_TRANSIENT_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = re.compile(r"chunk-([0-9]+)")
_RESERVED_TOP = frozenset({"objects", "builds", "sha256", "corrupt"})
"""Top-level prefixes a log key must not use: they belong to objects and manifests."""

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How long the store keeps trying a silent or failing endpoint before it gives up."""

    attempts: int = 3
    backoff: float = 0.5
    """Seconds before the 2nd attempt, doubled before each next one (times a 0.5-1 jitter)."""
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    """Seconds without a byte from the server; a transfer that keeps progressing is not cut."""

    @property
    def bound(self) -> float:
        """The longest one call spends before ServiceUnavailableError, against a silent server."""
        pauses = sum(self.backoff * 2.0**i for i in range(self.attempts - 1))
        return self.attempts * (self.connect_timeout + self.read_timeout) + pauses


@dataclass(frozen=True)
class _Chunk:
    name: str
    index: int
    size: int


def _check_sha256(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise PermanentError(f"{sha256!r} is not a sha256 (64 lower-case hex digits)")
    return sha256


def _check_log_key(key: str) -> str:
    """The rules of FsArtifactStore, plus: no ``chunk-<n>`` part (those names hold a log's chunks)."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\0" in key
        or any(part in ("", ".", "..") or _CHUNK.fullmatch(part) for part in parts)
        or parts[0] in _RESERVED_TOP
    ):
        raise PermanentError(
            f"invalid log key {key!r}: it must be a relative path without '..', '.', empty or "
            "chunk-<n> parts, outside objects/, sha256/, corrupt/ and builds/"
        )
    return key


@contextmanager
def _atomic_file(target: Path) -> Iterator[BinaryIO]:
    """A temp file next to ``target``, renamed onto it on success and removed on error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
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


class S3LogWriter:
    """Buffers a step's log lines and writes them as numbered chunk objects.

    A chunk is flushed after ``flush_lines`` lines or ``flush_bytes`` bytes (in the writing
    thread, so a writer faster than S3 is slowed down rather than buffering without bound) and
    every ``flush_seconds`` (a background thread). A background flush that fails keeps its lines
    for the next one; a flush from ``write_line`` or ``close`` raises (the line stays buffered:
    do not write it again), so the step fails when S3 stays down beyond the retry bound.
    One writer per key at a time: the engine runs one attempt per key.
    """

    def __init__(
        self,
        store: S3ArtifactStore,
        key: str,
        next_index: int,
        *,
        flush_lines: int,
        flush_bytes: int,
        flush_seconds: float,
    ) -> None:
        self._store, self.key, self._next_index = store, key, next_index
        self._flush_lines, self._flush_bytes = flush_lines, flush_bytes
        self._buffer: list[bytes] = []
        self._buffered_bytes = 0
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time keeps chunks in order
        self._closing = False
        self._closed = False
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_periodically, args=(flush_seconds,), name=f"log-flush {key}", daemon=True
        )
        self._flusher.start()

    def write_line(self, line: str) -> None:
        if self._closing:
            raise PermanentError(f"log {self.key} is closed")
        data = line.rstrip("\n").encode("utf-8", "replace") + b"\n"
        with self._buffer_lock:
            self._buffer.append(data)
            self._buffered_bytes += len(data)
            full = len(self._buffer) >= self._flush_lines or self._buffered_bytes >= self._flush_bytes
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines as the next chunk; they stay buffered if that fails."""
        with self._flush_lock:
            with self._buffer_lock:
                count = len(self._buffer)
                data = b"".join(self._buffer)
            if not count:
                return
            self._store._put_log_chunk(self.key, self._next_index, data)
            self._next_index += 1
            with self._buffer_lock:
                del self._buffer[:count]
                self._buffered_bytes -= len(data)

    def _flush_periodically(self, period: float) -> None:
        while not self._stop.wait(period):
            # A failure here is retried next period; write_line or close report it if it lasts.
            with contextlib.suppress(BuildfarmError):
                self.flush()

    def close(self) -> None:
        """Flush the rest and write the joined log ``<key>``; call again if it raised."""
        if self._closed:
            return
        self._closing = True
        self._stop.set()
        self._flusher.join()
        self.flush()
        self._store._join_log(self.key)
        self._closed = True

    def __enter__(self) -> S3LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3ArtifactStore:
    """:class:`~buildfarm.backends.base.ArtifactStore` on an S3 bucket.

    ``endpoint`` is ``host[:port]``; ``secure`` selects https. ``region`` saves a bucket-location
    request when given. The constructor does no I/O: call :meth:`check` at start.
    """

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
        if not endpoint or "/" in endpoint:
            raise PermanentError(f"invalid S3 endpoint {endpoint!r}: give host[:port], no scheme or path")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise PermanentError(f"S3 part size must be 5 MiB to 5 GiB, not {part_size} bytes")
        if retry.attempts < 1:
            raise PermanentError(f"S3 retry attempts must be >= 1, not {retry.attempts}")
        self.endpoint, self.bucket, self.retry = endpoint, bucket, retry
        self.where = f"bucket {bucket!r} at {'https' if secure else 'http'}://{endpoint}"
        self._part_size, self._url_expiry = part_size, url_expiry
        self._flush_lines, self._flush_bytes, self._flush_seconds = flush_lines, flush_bytes, flush_seconds
        # Our own retry loop replaces urllib3's (5 tries, 5 min timeouts): one bound, one error.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=retry.connect_timeout, read=retry.read_timeout),
            retries=False,
            maxsize=10,
        )
        self._client = Minio(endpoint, access_key, secret_key, secure=secure, region=region, http_client=http)

    # -- calls ---------------------------------------------------------------------------------

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying transient failures; map S3 errors to the farm's errors."""
        started = time.monotonic()
        last: Exception | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                time.sleep(self.retry.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))
            try:
                return operation()
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    raise NotFoundError(f"{exc.object_name} is not in {self.where}") from exc
                if exc.code == "NoSuchBucket":
                    raise PermanentError(f"S3 {self.where} does not exist") from exc
                if exc.code not in _TRANSIENT_CODES and exc.response.status < 500:
                    message = f"S3 {what} in {self.where} failed: {exc.code}: {exc.message}"
                    raise PermanentError(message) from exc
                last = exc
            except (ServerError, InvalidResponseError) as exc:
                status = exc.status_code if isinstance(exc, ServerError) else exc._code
                if status < 500 and status != 429:
                    raise PermanentError(f"S3 {what} in {self.where} failed: {exc}") from exc
                last = exc
            except urllib3.exceptions.HTTPError as exc:
                last = exc
        elapsed = time.monotonic() - started
        raise ServiceUnavailableError(
            f"S3 {self.where} did not answer {what} ({self.retry.attempts} attempts in {elapsed:.1f}s): "
            f"{type(last).__name__}: {last}",
            retry_after=max(self.retry.backoff, 1.0),
        ) from last

    def check(self) -> None:
        """At start: the endpoint answers and the bucket exists (PermanentError naming it if not)."""
        if not self._call("bucket check", lambda: self._client.bucket_exists(self.bucket)):
            raise PermanentError(f"S3 {self.where} does not exist: create it or fix the bucket setting")

    def _stat_size(self, name: str) -> int | None:
        try:
            return self._call(f"stat of {name}", lambda: self._client.stat_object(self.bucket, name)).size
        except NotFoundError:
            return None

    def _get_bytes(self, name: str, offset: int = 0) -> bytes:
        def get() -> bytes:
            response = self._client.get_object(self.bucket, name, offset=offset)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call(f"download of {name}", get)

    def _put_bytes(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._call(
            f"upload of {name}",
            lambda: self._client.put_object(
                self.bucket, name, io.BytesIO(data), len(data), content_type, part_size=self._part_size
            ),
        )

    # -- objects -------------------------------------------------------------------------------

    @staticmethod
    def object_name(sha256: str) -> str:
        return f"sha256/{_check_sha256(sha256)[:2]}/{sha256}"

    def has(self, sha256: str) -> bool:
        return self._stat_size(self.object_name(sha256)) is not None

    def put_file(self, path: Path) -> ObjectRef:
        # Hash first: content that is already stored costs one read and one HEAD, no upload.
        path = Path(path)
        sha256, size = file_sha256(path)
        name = self.object_name(sha256)
        if self._stat_size(name) is not None:
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
        if self._stat_size(name) is None:
            # Two writers may both upload: S3 keeps one of two identical objects, readers see either.
            self._put_bytes(name, data)
        return ObjectRef(sha256, len(data))

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
        if self._stat_size(name) is None:
            raise NotFoundError(f"artifact {sha256} is not in the store {self.where}")
        return self._presign(name, expires)

    def _presign(self, name: str, expires: timedelta | None = None) -> str:
        return self._call(
            f"presigning of {name}",
            lambda: self._client.presigned_get_object(self.bucket, name, expires or self._url_expiry),
        )

    # -- logs ----------------------------------------------------------------------------------

    def _chunks(self, key: str) -> list[_Chunk]:
        """The log's chunks in order, with their sizes from the listing (nothing downloaded)."""
        prefix = f"{key}/chunk-"

        def list_chunks() -> list[_Chunk]:
            found = []
            for obj in self._client.list_objects(self.bucket, prefix=prefix):
                name = str(obj.object_name)
                match = _CHUNK.fullmatch(name.rsplit("/", 1)[1])
                if match:
                    found.append(_Chunk(name, int(match.group(1)), int(obj.size or 0)))
            return sorted(found, key=lambda chunk: chunk.index)

        return self._call(f"listing of {prefix}", list_chunks)

    def _put_log_chunk(self, key: str, index: int, data: bytes) -> None:
        self._put_bytes(f"{key}/chunk-{index:06d}", data, "text/plain; charset=utf-8")

    def open_log(self, key: str) -> S3LogWriter:
        chunks = self._chunks(_check_log_key(key))
        # A reopened log appends: its chunks continue after the existing ones.
        next_index = chunks[-1].index + 1 if chunks else 1
        return S3LogWriter(
            self,
            key,
            next_index,
            flush_lines=self._flush_lines,
            flush_bytes=self._flush_bytes,
            flush_seconds=self._flush_seconds,
        )

    def read_log(self, key: str, offset: int = 0) -> tuple[bytes, int]:
        _check_log_key(key)
        if offset < 0:
            raise PermanentError(f"log offset must be >= 0, not {offset}")
        parts: list[bytes] = []
        position = 0
        for chunk in self._chunks(key):
            end = position + chunk.size
            if end > offset:  # skip whole chunks before the offset without downloading them
                parts.append(self._get_bytes(chunk.name, max(0, offset - position)))
            position = end
        data = b"".join(parts)
        # Nothing yet, or an offset past the end: a follower keeps polling from the same offset.
        return data, offset + len(data)

    def _join_log(self, key: str) -> int:
        """Write ``<key>`` as the concatenation of the log's chunks; return its size."""
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as joined:
            for chunk in self._chunks(key):
                joined.write(self._get_bytes(chunk.name))
            size = joined.tell()

            def upload() -> None:
                joined.seek(0)
                self._client.put_object(
                    self.bucket,
                    key,
                    cast(BinaryIO, joined),
                    size,
                    "text/plain; charset=utf-8",
                    part_size=self._part_size,
                )

            self._call(f"upload of {key}", upload)
        return size

    def log_location(self, key: str) -> str:
        """A presigned URL of ``<key>``, the whole log.

        ``close()`` writes it; while a step runs, or after it crashed before ``close()``, this
        joins the chunks flushed so far into ``<key>`` (when it is missing or shorter), so the
        URL always shows the log up to at least the moment it was made.
        """
        _check_log_key(key)
        flushed = sum(chunk.size for chunk in self._chunks(key))
        if flushed and self._stat_size(key) != flushed:
            self._join_log(key)
        return self._presign(key)

    # -- build manifests -----------------------------------------------------------------------

    @staticmethod
    def _manifest_name(build_id: int) -> str:
        if isinstance(build_id, bool) or not isinstance(build_id, int) or build_id < 0:
            raise PermanentError(f"invalid build id {build_id!r}")
        return f"builds/{build_id}/manifest.json"

    def put_build_manifest(self, build_id: int, data: dict[str, object]) -> None:
        encoded = json.dumps(data, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        self._put_bytes(self._manifest_name(build_id), encoded, "application/json")

    def get_build_manifest(self, build_id: int) -> dict[str, object] | None:
        try:
            raw = self._get_bytes(self._manifest_name(build_id))
        except NotFoundError:
            return None
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise PermanentError(f"manifest of build {build_id} in {self.where} is not a JSON object")
        return data


class _CorruptError(Exception):
    """Raised inside a download whose bytes do not match their name; carries the actual hash."""
