"""One S3 bucket reached through the ``minio`` SDK, with bounds: every call is retried on transient
failures (connection errors, timeouts, 5xx, SlowDown) ``attempts`` times with exponential
backoff, then raises :class:`ServiceUnavailableError` naming the endpoint and bucket
(:attr:`RetryPolicy.bound` is the longest that takes); every other S3 error is permanent.

:class:`S3Bucket` holds the plain object operations by key (also what step logs are made of,
:class:`buildfarm.backends.s3logs.BucketIO`); :class:`buildfarm.backends.s3.S3ArtifactStore`
builds the farm's artifact store on it.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, BinaryIO, TypeVar, cast

import urllib3
from minio import Minio
from minio.datatypes import Object
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import MAX_PART_SIZE, MIN_PART_SIZE

from buildfarm.model.errors import NotFoundError, PermanentError, ServiceUnavailableError

DEFAULT_PART_SIZE = 16 * 1024 * 1024
"""Bytes per multipart part; larger files are uploaded in parts, 3 at a time (memory ~4 parts)."""
URL_EXPIRY = timedelta(days=7)
"""Presigned URLs live this long: the longest SigV4 allows, so `build show` links last a week."""
DELETE_BATCH = 1000
"""Objects per multi-object DELETE request (the S3 maximum)."""

_TRANSIENT_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})

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


class S3Bucket:
    """A bucket's objects by key, with the bounds above.

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

    # -- bucket operations (also what step logs are made of: s3logs.BucketIO) ------------------

    def stat(self, name: str) -> Object | None:
        """The object ``name`` (any key): size, last-modified time...; None if there is none."""
        try:
            return self._call(f"stat of {name}", lambda: self._client.stat_object(self.bucket, name))
        except NotFoundError:
            return None

    def size_of(self, name: str) -> int | None:
        """The size of the object ``name`` (any key), or None if there is none."""
        found = self.stat(name)
        return None if found is None else int(found.size or 0)

    def remove_names(self, names: Iterable[str]) -> None:
        """Remove these objects (any keys), :data:`DELETE_BATCH` per request; absent ones are fine."""
        batch: list[str] = []
        for name in names:
            batch.append(name)
            if len(batch) == DELETE_BATCH:
                self._remove_batch(batch)
                batch = []
        if batch:
            self._remove_batch(batch)

    def _remove_batch(self, names: list[str]) -> None:
        def remove() -> None:
            # The SDK sends the request lazily, while its error iterator is consumed.
            errors = list(self._client.remove_objects(self.bucket, (DeleteObject(n) for n in names)))
            failed = [e for e in errors if e.code != "NoSuchKey"]
            if failed:
                first = failed[0]
                raise PermanentError(
                    f"S3 removal of {len(failed)} objects in {self.where} failed, first {first.name}: "
                    f"{first.code}: {first.message}"
                )

        self._call(f"removal of {len(names)} objects", remove)

    def get_object_bytes(self, name: str, offset: int = 0) -> bytes:
        def get() -> bytes:
            response = self._client.get_object(self.bucket, name, offset=offset)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call(f"download of {name}", get)

    def put_object_bytes(
        self, name: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self._call(
            f"upload of {name}",
            lambda: self._client.put_object(
                self.bucket, name, io.BytesIO(data), len(data), content_type, part_size=self._part_size
            ),
        )

    def put_object_file(self, name: str, handle: IO[bytes], size: int, content_type: str) -> None:
        """Upload ``size`` bytes from ``handle``'s position (seekable: a retry starts over)."""
        start = handle.tell()

        def upload() -> None:
            handle.seek(start)
            data = cast(BinaryIO, handle)
            self._client.put_object(self.bucket, name, data, size, content_type, part_size=self._part_size)

        self._call(f"upload of {name}", upload)

    def list_object_sizes(self, prefix: str) -> list[tuple[str, int]]:
        def list_names() -> list[tuple[str, int]]:
            return [
                (str(obj.object_name), int(obj.size or 0))
                for obj in self._client.list_objects(self.bucket, prefix=prefix)
            ]

        return self._call(f"listing of {prefix}", list_names)

    def presign_get(self, name: str, expires: timedelta | None = None) -> str:
        return self._call(
            f"presigning of {name}",
            lambda: self._client.presigned_get_object(self.bucket, name, expires or self._url_expiry),
        )
