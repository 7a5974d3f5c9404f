"""Step logs in S3: lines buffered into numbered chunk objects, readable while the step runs.

S3 objects are immutable, so a log is a series of chunks ``<key>/chunk-<NNNNNN>`` (numbered
from 1, in write order) that a follower reads by offset, plus ``<key>``, the whole log joined
from its chunks when the writer closes (or when someone asks for its URL). This module holds
that logic; :class:`buildfarm.backends.s3.S3ArtifactStore` supplies the bucket operations.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Protocol

from buildfarm.model.errors import BuildfarmError, PermanentError

LOG_FLUSH_LINES = 1000
"""A log writer flushes a chunk after this many buffered lines (a chatty step: ~1 PUT per 1000 lines)."""
LOG_FLUSH_BYTES = 1024 * 1024
"""... or after this many buffered bytes, so a few huge lines cannot hold much memory."""
LOG_FLUSH_SECONDS = 2.0
"""... and every 2 s (a background thread), so ``--follow`` lags at most ~2 s and a crashed step
loses at most its last ~2 s of output; one PUT per 2 s per running step is cheap for S3."""

_CHUNK = re.compile(r"chunk-([0-9]+)")
RESERVED_TOP = frozenset({"objects", "builds", "sha256", "corrupt", "uploads"})
"""Top-level prefixes a log key must not use: they belong to objects, manifests and upload slots."""
_TEXT = "text/plain; charset=utf-8"


class BucketIO(Protocol):
    """The bucket operations a log is made of (with the store's retries and error mapping)."""

    def put_object_bytes(self, name: str, data: bytes, content_type: str) -> None: ...

    def put_object_file(self, name: str, handle: IO[bytes], size: int, content_type: str) -> None: ...

    def get_object_bytes(self, name: str, offset: int = 0) -> bytes: ...

    def size_of(self, name: str) -> int | None: ...

    def remove_names(self, names: Iterable[str]) -> None: ...

    def list_object_sizes(self, prefix: str) -> list[tuple[str, int]]: ...

    def presign_get(self, name: str) -> str: ...


@dataclass(frozen=True)
class _Chunk:
    name: str
    index: int
    size: int


def check_log_key(key: str) -> str:
    """The rules of FsArtifactStore, plus: no ``chunk-<n>`` part (those names hold a log's chunks)."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\0" in key
        or any(part in ("", ".", "..") or _CHUNK.fullmatch(part) for part in parts)
        or parts[0] in RESERVED_TOP
    ):
        raise PermanentError(
            f"invalid log key {key!r}: it must be a relative path without '..', '.', empty or "
            "chunk-<n> parts, outside objects/, sha256/, corrupt/, uploads/ and builds/"
        )
    return key


class S3Logs:
    """Opens, reads and joins chunked logs in one bucket."""

    def __init__(self, bucket: BucketIO, *, flush_lines: int, flush_bytes: int, flush_seconds: float) -> None:
        self._bucket = bucket
        self._flush_lines, self._flush_bytes, self._flush_seconds = flush_lines, flush_bytes, flush_seconds

    def chunks(self, key: str) -> list[_Chunk]:
        """The log's chunks in order, with their sizes from the listing (nothing downloaded)."""
        found = []
        for name, size in self._bucket.list_object_sizes(f"{key}/chunk-"):
            match = _CHUNK.fullmatch(name.rsplit("/", 1)[1])
            if match:
                found.append(_Chunk(name, int(match.group(1)), size))
        return sorted(found, key=lambda chunk: chunk.index)

    def put_chunk(self, key: str, index: int, data: bytes) -> None:
        self._bucket.put_object_bytes(f"{key}/chunk-{index:06d}", data, _TEXT)

    def open(self, key: str) -> S3LogWriter:
        chunks = self.chunks(check_log_key(key))
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

    def read(self, key: str, offset: int = 0) -> tuple[bytes, int]:
        check_log_key(key)
        if offset < 0:
            raise PermanentError(f"log offset must be >= 0, not {offset}")
        parts: list[bytes] = []
        position = 0
        for chunk in self.chunks(key):
            end = position + chunk.size
            if end > offset:  # skip whole chunks before the offset without downloading them
                parts.append(self._bucket.get_object_bytes(chunk.name, max(0, offset - position)))
            position = end
        data = b"".join(parts)
        # Nothing yet, or an offset past the end: a follower keeps polling from the same offset.
        return data, offset + len(data)

    def join(self, key: str) -> int:
        """Write ``<key>`` as the concatenation of the log's chunks; return its size."""
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as joined:
            for chunk in self.chunks(key):
                joined.write(self._bucket.get_object_bytes(chunk.name))
            size = joined.tell()
            joined.seek(0)
            self._bucket.put_object_file(key, joined, size, _TEXT)
        return size

    def location(self, key: str) -> str:
        """A presigned URL of ``<key>``, the whole log.

        ``close()`` writes it; while a step runs, or after it crashed before ``close()``, this
        joins the chunks flushed so far into ``<key>`` (when it is missing or shorter), so the
        URL always shows the log up to at least the moment it was made.
        """
        check_log_key(key)
        flushed = sum(chunk.size for chunk in self.chunks(key))
        if flushed and self._bucket.size_of(key) != flushed:
            self.join(key)
        return self._bucket.presign_get(key)

    def delete(self, key: str) -> int:
        """Remove the log's chunks and its joined copy; return the bytes its chunks held.

        A writer still open on ``key`` would go on writing chunks: logs are deleted only for
        builds that are over.
        """
        check_log_key(key)
        chunks = self.chunks(key)
        joined = self._bucket.size_of(key)
        self._bucket.remove_names([*(chunk.name for chunk in chunks), *([key] if joined is not None else [])])
        return sum(chunk.size for chunk in chunks) or (joined or 0)


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
        logs: S3Logs,
        key: str,
        next_index: int,
        *,
        flush_lines: int,
        flush_bytes: int,
        flush_seconds: float,
    ) -> None:
        self._logs, self.key, self._next_index = logs, key, next_index
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
            self._logs.put_chunk(self.key, self._next_index, data)
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
        self._logs.join(self.key)
        self._closed = True

    def __enter__(self) -> S3LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
