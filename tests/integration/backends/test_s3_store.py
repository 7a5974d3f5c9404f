"""S3ArtifactStore against a real S3 endpoint (moto's server): the FsArtifactStore behaviours where
they apply, plus chunked logs, presigned URLs, multipart uploads and bounded retries."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ReadTimeoutError

from buildfarm.backends import s3bucket
from buildfarm.backends.base import ArtifactStore, LogWriter
from buildfarm.backends.s3 import (
    DEFAULT_PART_SIZE,
    LOG_FLUSH_LINES,
    LOG_FLUSH_SECONDS,
    RetryPolicy,
    S3ArtifactStore,
)
from buildfarm.model.errors import NotFoundError, PermanentError, ServiceUnavailableError

from helpers import free_port, wait_until
from s3kit import ACCESS_KEY, REGION, SECRET_KEY, MotoS3, running_moto_s3
from storekit import (
    INVALID_LOG_KEYS,
    assert_log_key_refused,
    corruption_quarantined,
    fetch_a_copy,
    fetch_missing,
    manifest_replaced,
    put_file_like_bytes,
    put_from_threads,
    put_twice,
    reopened_log_appends,
)

MiB = 1024 * 1024
# Short timeouts: moto on localhost answers in milliseconds, and the outage tests stay fast.
TEST_RETRY = RetryPolicy(attempts=3, backoff=0.1, connect_timeout=1.0, read_timeout=2.0)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with running_moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


def make_store(
    moto: MotoS3,
    bucket: str,
    *,
    part_size: int = DEFAULT_PART_SIZE,
    retry: RetryPolicy = TEST_RETRY,
    flush_lines: int = LOG_FLUSH_LINES,
    flush_seconds: float = LOG_FLUSH_SECONDS,
) -> S3ArtifactStore:
    return S3ArtifactStore(
        moto.endpoint,
        ACCESS_KEY,
        SECRET_KEY,
        bucket,
        secure=False,
        region=REGION,
        part_size=part_size,
        retry=retry,
        flush_lines=flush_lines,
        flush_seconds=flush_seconds,
    )


@pytest.fixture
def bucket(moto: MotoS3) -> str:
    return moto.new_bucket()


@pytest.fixture
def store(moto: MotoS3, bucket: str) -> S3ArtifactStore:
    # Flush by line count only (the timer is tested on its own), so chunk boundaries are exact.
    return make_store(moto, bucket, flush_lines=3, flush_seconds=60.0)


def test_is_an_artifact_store(store: S3ArtifactStore) -> None:
    as_protocol: ArtifactStore = store
    writer: LogWriter = store.open_log("logs/1/a/1.log")
    writer.close()
    assert as_protocol is store


def test_check_names_a_missing_bucket(moto: MotoS3, store: S3ArtifactStore) -> None:
    store.check()
    with pytest.raises(PermanentError, match=r"bucket 'no-such-bucket' at http://127\.0\.0\.1:\d+ does not"):
        make_store(moto, "no-such-bucket").check()


def test_put_bytes_is_content_addressed_and_stored_once(
    moto: MotoS3, store: S3ArtifactStore, bucket: str
) -> None:
    sha = put_twice(store)
    assert moto.object_names(bucket) == [f"sha256/{sha[:2]}/{sha}"]
    # A small object put again is simply uploaded again: one request, which also refreshes its
    # last-modified time (retention never collects content that is being stored again).
    assert moto.requests("PUT", f"/{bucket}/sha256/") == 2
    assert moto.requests("HEAD", f"/{bucket}/sha256/") == 0


def test_put_file_dedupes_with_put_bytes(
    moto: MotoS3, store: S3ArtifactStore, bucket: str, tmp_path: Path
) -> None:
    put_file_like_bytes(store, tmp_path)
    assert len(moto.object_names(bucket)) == 1
    assert moto.requests("PUT", f"/{bucket}/sha256/") == 2  # the upload, then the small re-put


def test_concurrent_puts_of_same_content_from_threads(moto: MotoS3, bucket: str) -> None:
    # moto (not S3) sometimes answers 500 when two PUTs of one key overlap (it closes the buffer
    # of the object being replaced while computing its ETag): more attempts let the retry absorb it.
    store = make_store(moto, bucket, retry=RetryPolicy(attempts=6, backoff=0.05, read_timeout=5.0))
    ref = put_from_threads(store, os.urandom(3 * MiB))
    assert moto.object_names(bucket) == [store.object_name(ref.sha256)]


def test_multipart_upload_of_a_file_above_the_part_size(moto: MotoS3, bucket: str, tmp_path: Path) -> None:
    store = make_store(moto, bucket, part_size=5 * MiB)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(11 * MiB))
    ref = store.put_file(source)
    stat = moto.client().stat_object(bucket, store.object_name(ref.sha256))
    assert stat.size == 11 * MiB
    assert str(stat.etag).endswith("-3")  # S3's multipart ETag: 3 parts of 5, 5 and 1 MiB
    assert moto.requests("POST", f"/{bucket}/sha256/") == 2  # create + complete the upload
    dest = tmp_path / "back.bin"
    store.fetch(ref.sha256, dest)
    assert dest.read_bytes() == source.read_bytes()
    assert store.put_file(source) == ref
    assert moto.requests("POST", f"/{bucket}/sha256/") == 2  # stored once


def test_fetch_copies_verified_bytes(store: S3ArtifactStore, tmp_path: Path) -> None:
    dest = fetch_a_copy(store, tmp_path)
    assert [p.name for p in dest.parent.iterdir()] == ["payload.bin"]  # no temp files left


def test_fetch_missing_object(store: S3ArtifactStore, tmp_path: Path) -> None:
    fetch_missing(store, tmp_path, f"artifact {'a' * 64} is not in the store bucket")


def test_fetch_detects_corruption_and_quarantines(
    moto: MotoS3, store: S3ArtifactStore, bucket: str, tmp_path: Path
) -> None:
    def corrupt(sha: str) -> None:
        moto.client().put_object(bucket, store.object_name(sha), io.BytesIO(b"bad bytes!"), 10)

    work = tmp_path / "work"
    work.mkdir()
    corruption_quarantined(store, work, corrupt, lambda: len(moto.object_names(bucket, "corrupt/")))
    assert [p.name for p in work.iterdir()] == ["fetched"]  # no temp files left


def test_invalid_sha_rejected(store: S3ArtifactStore) -> None:
    with pytest.raises(PermanentError, match="is not a sha256"):
        store.has("../../etc/passwd")
    with pytest.raises(PermanentError, match="is not a sha256"):
        store.presigned_url("ABC")


def test_presigned_artifact_url_downloads_identical_bytes(store: S3ArtifactStore) -> None:
    data = os.urandom(256 * 1024)
    ref = store.put_bytes(data)
    url = store.presigned_url(ref.sha256)
    assert "X-Amz-Expires=604800" in url  # 7 days
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == data
    with pytest.raises(NotFoundError, match="is not in the store"):
        store.presigned_url("b" * 64)


def test_log_follow_across_chunk_boundaries(moto: MotoS3, store: S3ArtifactStore, bucket: str) -> None:
    key = "logs/7/hello/1.log"
    assert store.read_log(key) == (b"", 0)  # not started yet
    assert store.read_log(key, 42) == (b"", 42)
    writer = store.open_log(key)
    writer.write_line("first")
    writer.write_line("second line\n")
    assert store.read_log(key) == (b"", 0)  # buffered: 2 lines < flush_lines
    writer.write_line("ünïcode")  # 3rd line: chunk 1 is flushed
    expected = "first\nsecond line\nünïcode\n".encode()
    data, offset = store.read_log(key)
    assert (data, offset) == (expected, len(expected))
    assert store.read_log(key, 4) == (expected[4:], len(expected))  # from inside the chunk
    for n in range(4):
        writer.write_line(f"line {n}")  # chunk 2 = line 0..2; "line 3" stays buffered
    data, offset = store.read_log(key, offset)
    assert data == b"line 0\nline 1\nline 2\n"
    writer.close()
    writer.close()  # closing twice is harmless
    full = expected + b"line 0\nline 1\nline 2\nline 3\n"
    assert store.read_log(key, offset) == (b"line 3\n", len(full))
    assert moto.object_names(bucket, key) == [
        key,  # the joined log, written by close()
        f"{key}/chunk-000001",
        f"{key}/chunk-000002",
        f"{key}/chunk-000003",
    ]
    # Every offset, including ones inside a chunk and on its boundaries, reads the same bytes
    # as a single file would.
    for start in range(len(full) + 2):
        assert store.read_log(key, start) == (full[start:], max(start, len(full)))
    with pytest.raises(PermanentError, match="is closed"):
        writer.write_line("late")


def test_chunks_before_the_offset_are_not_downloaded(
    moto: MotoS3, store: S3ArtifactStore, bucket: str
) -> None:
    key = "logs/8/big/1.log"
    with store.open_log(key) as writer:
        for n in range(30):
            writer.write_line(f"line {n:02d}")  # 10 chunks of 24 bytes
    before = moto.requests("GET", f"/{bucket}/{key}/chunk-")
    data, offset = store.read_log(key, 24 * 9 + 8)
    assert data == b"line 27\nline 28\nline 29\n"[8:]
    assert offset == 240
    assert moto.requests("GET", f"/{bucket}/{key}/chunk-") == before + 1  # only the last chunk


def test_timer_flushes_a_quiet_step(moto: MotoS3, bucket: str) -> None:
    store = make_store(moto, bucket, flush_seconds=0.2)
    key = "logs/9/quiet/1.log"
    with store.open_log(key) as writer:
        writer.write_line("only line")
        # No further write and no close: only the timer can make the line readable.
        wait_until(lambda: store.read_log(key) == (b"only line\n", 10), 60, "the timer flush")


def test_reopened_log_appends(store: S3ArtifactStore) -> None:
    reopened_log_appends(store)


def test_crashed_writer_keeps_flushed_lines(moto: MotoS3, bucket: str) -> None:
    key = "logs/3/crash/1.log"
    script = textwrap.dedent(
        f"""
        import sys, time
        from buildfarm.backends.s3 import S3ArtifactStore
        store = S3ArtifactStore({moto.endpoint!r}, {ACCESS_KEY!r}, {SECRET_KEY!r}, {bucket!r},
                                secure=False, region={REGION!r}, flush_lines=3, flush_seconds=600)
        writer = store.open_log({key!r})
        for n in range(5):
            writer.write_line(f"line {{n}}")  # lines 0-2 are flushed, 3-4 only buffered
        print("written", flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"written\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    store = make_store(moto, bucket)
    assert store.read_log(key) == (b"line 0\nline 1\nline 2\n", 21)
    # No close() ran, so there was no joined log: log_location joins what was flushed.
    assert httpx.get(store.log_location(key)).content == b"line 0\nline 1\nline 2\n"


def test_log_location_is_a_presigned_url_of_the_whole_log(store: S3ArtifactStore) -> None:
    key = "logs/4/url/1.log"
    writer = store.open_log(key)
    for n in range(4):
        writer.write_line(f"line {n}")
    running = httpx.get(store.log_location(key))  # while the step runs: what was flushed so far
    assert running.content == b"line 0\nline 1\nline 2\n"
    writer.close()
    url = store.log_location(key)
    assert "X-Amz-Signature=" in url
    assert "X-Amz-Expires=604800" in url
    assert httpx.get(url).content == b"line 0\nline 1\nline 2\nline 3\n"


# and, in S3's one namespace, content objects and a log's own chunks
@pytest.mark.parametrize("key", [*INVALID_LOG_KEYS, "sha256/aa/x", "logs/1/s/1.log/chunk-000001"])
def test_log_key_traversal_rejected(store: S3ArtifactStore, key: str) -> None:
    assert_log_key_refused(store, key)


def test_build_manifest_roundtrip(moto: MotoS3, store: S3ArtifactStore, bucket: str) -> None:
    manifest_replaced(store)
    assert moto.object_names(bucket) == ["builds/3/manifest.json"]
    with pytest.raises(PermanentError, match="invalid build id"):
        store.get_build_manifest(-1)


# -- outages -------------------------------------------------------------------------------------


def test_paused_server_gives_service_unavailable_within_the_bound(
    moto: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    retry = RetryPolicy(attempts=3, backoff=0.1, connect_timeout=0.5, read_timeout=0.5)
    store = make_store(moto, bucket, retry=retry)
    # What bounds the call, recorded rather than timed: every request the store sends (urllib3
    # retries included) and how it ended, and the pauses between its attempts.
    requests: list[Exception | None] = []
    pauses: list[float] = []
    urlopen = HTTPConnectionPool.urlopen

    def recorded_urlopen(pool: HTTPConnectionPool, *args: Any, **kwargs: Any) -> Any:
        try:
            answer = urlopen(pool, *args, **kwargs)
        except Exception as exc:
            requests.append(exc)
            raise
        requests.append(None)
        return answer

    monkeypatch.setattr(HTTPConnectionPool, "urlopen", recorded_urlopen)
    monkeypatch.setattr(s3bucket.time, "sleep", pauses.append)
    moto.pause()
    try:
        with pytest.raises(
            ServiceUnavailableError, match=rf"{bucket}' at http://{moto.endpoint} did not .*\(3 attempts in"
        ):
            store.put_bytes(b"during the outage")
    finally:
        moto.resume()
    # 3 requests, each cut by the policy's read timeout (none hangs, none is retried inside
    # urllib3), and 2 pauses of the backoff with its jitter: <= retry.bound in all.
    assert [type(exc) for exc in requests] == [ReadTimeoutError] * 3, requests
    assert all("read timeout=0.5" in str(exc) for exc in requests), requests
    assert len(pauses) == 2
    assert 0.05 <= pauses[0] <= 0.1
    assert 0.1 <= pauses[1] <= 0.2
    monkeypatch.undo()
    # Once the server is back, the same call succeeds: nothing was half-stored.
    assert store.put_bytes(b"during the outage").size == 17


def test_refused_connection_gives_service_unavailable(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    store = S3ArtifactStore(endpoint, "k", "s", "farm", secure=False, region=REGION, retry=TEST_RETRY)
    with pytest.raises(
        ServiceUnavailableError, match=rf"bucket 'farm' at http://{endpoint} .*3 attempts.*Connection refused"
    ):
        store.fetch("c" * 64, tmp_path / "x")
    with pytest.raises(ServiceUnavailableError):
        store.check()


@dataclass
class ScriptedS3:
    """A misbehaving S3 endpoint: answers each request with the next scripted status, then 200."""

    endpoint: str = ""
    script: list[tuple[int, str]] = field(default_factory=list)  # (HTTP status, S3 error code)
    seen: list[str] = field(default_factory=list)  # the methods of the requests it got

    def store(self) -> S3ArtifactStore:
        return S3ArtifactStore(self.endpoint, "k", "s", "farm", secure=False, region=REGION, retry=TEST_RETRY)


@pytest.fixture
def scripted_s3() -> Iterator[ScriptedS3]:
    scripted = ScriptedS3()

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            scripted.seen.append(self.command)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, code = scripted.script.pop(0) if scripted.script else (200, "")
            body = b""
            if code and self.command != "HEAD":
                body = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("ETag", '"0"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_PUT = do_GET = answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scripted.endpoint = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield scripted
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_5xx_and_slowdown_are_retried(scripted_s3: ScriptedS3, tmp_path: Path) -> None:
    scripted_s3.script[:] = [(503, ""), (404, "NoSuchKey"), (503, "SlowDown"), (500, "InternalError")]
    (tmp_path / "x").write_bytes(b"x")
    # put_file: the copy that would refresh a stored object stats it first (HEAD), then uploads.
    assert scripted_s3.store().put_file(tmp_path / "x").size == 1
    assert scripted_s3.seen == ["HEAD", "HEAD", "PUT", "PUT", "PUT"]


def test_lasting_slowdown_gives_up_after_the_attempts(scripted_s3: ScriptedS3) -> None:
    scripted_s3.script[:] = [(503, "SlowDown")] * 10
    with pytest.raises(ServiceUnavailableError, match=r"3 attempts in .*SlowDown"):
        scripted_s3.store().get_build_manifest(1)
    assert scripted_s3.seen == ["GET"] * 3


def test_access_denied_is_permanent_and_not_retried(scripted_s3: ScriptedS3) -> None:
    scripted_s3.script[:] = [(403, "AccessDenied")]
    with pytest.raises(PermanentError, match="AccessDenied"):
        scripted_s3.store().get_build_manifest(1)
    assert scripted_s3.seen == ["GET"]
