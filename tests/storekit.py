"""What every ArtifactStore does alike, checked the same way on each (a directory, S3).

``test_fs_store`` and ``test_s3_store`` call these and add what only their store shows (files
and inodes, S3 requests and object names).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from buildfarm.backends.base import ArtifactStore, ObjectRef
from buildfarm.model.errors import NotFoundError, PermanentError

INVALID_LOG_KEYS = [
    "../outside.log",
    "logs/../../x",
    "/etc/passwd",
    "logs//x",
    "logs/./x",
    "",
    "objects/sha256/aa/x",
    "builds/1/manifest.json",
    "logs\\..\\x",
]
"""Log keys no store may open, read or locate: outside ``logs/``, or escaping it."""


def assert_log_key_refused(store: ArtifactStore, key: str) -> None:
    with pytest.raises(PermanentError, match="invalid log key"):
        store.open_log(key)
    with pytest.raises(PermanentError, match="invalid log key"):
        store.read_log(key)
    with pytest.raises(PermanentError, match="invalid log key"):
        store.log_location(key)


def put_twice(store: ArtifactStore, data: bytes = b"hello farm\n") -> str:
    """Put the same bytes twice: one content address, the same ref; its sha256."""
    sha = hashlib.sha256(data).hexdigest()
    assert store.put_bytes(data) == store.put_bytes(data) == ObjectRef(sha, len(data))
    return sha


def put_file_like_bytes(store: ArtifactStore, tmp_path: Path) -> ObjectRef:
    """A file and its bytes are one object; an object never put is not there."""
    source = tmp_path / "pkg.deb"
    source.write_bytes(b"\x00deb bytes" * 1000)
    ref = store.put_file(source)
    assert ref == store.put_bytes(source.read_bytes())
    assert store.has(ref.sha256)
    assert not store.has("0" * 64)
    return ref


def put_from_threads(store: ArtifactStore, data: bytes, threads: int = 8) -> ObjectRef:
    """Put the same bytes from ``threads`` threads at once: no error, one ref."""
    start = threading.Barrier(threads)
    refs: list[ObjectRef] = []
    errors: list[BaseException] = []

    def put() -> None:
        try:
            start.wait()
            refs.append(store.put_bytes(data))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=put) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert len(set(refs)) == 1
    return refs[0]


def fetch_a_copy(store: ArtifactStore, tmp_path: Path) -> Path:
    """Fetch into a directory that does not exist yet; the file fetched."""
    ref = store.put_bytes(b"payload")
    dest = tmp_path / "out" / "nested" / "payload.bin"
    store.fetch(ref.sha256, dest)
    assert dest.read_bytes() == b"payload"
    return dest


def fetch_missing(store: ArtifactStore, tmp_path: Path, message: str) -> None:
    with pytest.raises(NotFoundError, match=message):
        store.fetch("a" * 64, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def corruption_quarantined(
    store: ArtifactStore, tmp_path: Path, corrupt: Callable[[str], None], quarantined: Callable[[], int]
) -> None:
    """An object whose bytes changed (``corrupt(sha256)``) is refused, moved aside
    (``quarantined()`` counts what was), and storing it again heals the store."""
    ref = store.put_bytes(b"good bytes")
    corrupt(ref.sha256)
    dest = tmp_path / "fetched"
    with pytest.raises(PermanentError, match="is corrupt"):
        store.fetch(ref.sha256, dest)
    assert not dest.exists()  # nothing half-written
    assert not store.has(ref.sha256)  # moved aside ...
    assert quarantined() == 1
    store.put_bytes(b"good bytes")  # ... so storing it again heals the store
    store.fetch(ref.sha256, dest)
    assert dest.read_bytes() == b"good bytes"


def reopened_log_appends(store: ArtifactStore) -> None:
    for line in ("a", "b"):
        writer = store.open_log("logs/1/s/1.log")
        writer.write_line(line)
        writer.close()
    assert store.read_log("logs/1/s/1.log") == (b"a\nb\n", 4)


def manifest_replaced(store: ArtifactStore) -> None:
    """A build's manifest: none at first, then the last one put."""
    assert store.get_build_manifest(3) is None
    store.put_build_manifest(3, {"project": "examples", "packages": [1, 2]})
    assert store.get_build_manifest(3) == {"project": "examples", "packages": [1, 2]}
    store.put_build_manifest(3, {"project": "other"})
    assert store.get_build_manifest(3) == {"project": "other"}
