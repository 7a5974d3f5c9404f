"""FsArtifactStore on a real directory: dedupe, atomic concurrent puts, corruption, logs, manifests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from buildfarm.backends.base import ArtifactStore
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.model.errors import PermanentError

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


@pytest.fixture
def store(tmp_path: Path) -> FsArtifactStore:
    return FsArtifactStore(tmp_path / "artifacts")


def _stored_files(store: FsArtifactStore) -> list[Path]:
    return sorted(p for p in (store.root / "objects" / "sha256").rglob("*") if p.is_file())


def test_is_an_artifact_store(store: FsArtifactStore) -> None:
    as_protocol: ArtifactStore = store
    assert as_protocol is store


def test_put_bytes_is_content_addressed_and_stored_once(store: FsArtifactStore) -> None:
    sha = hashlib.sha256(b"hello farm\n").hexdigest()
    store.put_bytes(b"hello farm\n")
    inode = store.object_path(sha).stat().st_ino
    assert put_twice(store) == sha
    assert store.object_path(sha) == store.root / "objects" / "sha256" / sha[:2] / sha
    assert _stored_files(store) == [store.object_path(sha)]
    # Existing content is not rewritten: same inode, no temp files left behind.
    assert store.object_path(sha).stat().st_ino == inode
    assert list((store.root / "objects" / "tmp").iterdir()) == []


def test_put_file_dedupes_with_put_bytes(store: FsArtifactStore, tmp_path: Path) -> None:
    put_file_like_bytes(store, tmp_path)
    assert len(_stored_files(store)) == 1


def test_concurrent_puts_of_same_content_from_threads(store: FsArtifactStore) -> None:
    data = os.urandom(3 * 1024 * 1024)  # several chunks, so writers really overlap
    ref = put_from_threads(store, data)
    assert _stored_files(store) == [store.object_path(ref.sha256)]
    assert store.object_path(ref.sha256).read_bytes() == data
    assert list((store.root / "objects" / "tmp").iterdir()) == []


def test_fetch_copies_verified_bytes(store: FsArtifactStore, tmp_path: Path) -> None:
    dest = fetch_a_copy(store, tmp_path)
    dest.write_bytes(b"changed by the consumer")
    sha = hashlib.sha256(b"payload").hexdigest()
    assert store.object_path(sha).read_bytes() == b"payload"  # a copy, not the object itself


def test_fetch_missing_object(store: FsArtifactStore, tmp_path: Path) -> None:
    fetch_missing(store, tmp_path, f"artifact {'a' * 64} is not in the store")


def test_fetch_detects_corruption_and_quarantines(store: FsArtifactStore, tmp_path: Path) -> None:
    def corrupt(sha: str) -> None:
        path = store.object_path(sha)
        path.chmod(0o644)
        path.write_bytes(b"bad bytes!")

    corruption_quarantined(
        store, tmp_path, corrupt, lambda: len(list((store.root / "objects" / "corrupt").iterdir()))
    )


def test_invalid_sha_rejected(store: FsArtifactStore) -> None:
    with pytest.raises(PermanentError, match="is not a sha256"):
        store.has("../../etc/passwd")


def test_log_lines_visible_to_follower_at_once(store: FsArtifactStore) -> None:
    key = "logs/7/hello/1.log"
    assert store.read_log(key) == (b"", 0)  # not started yet
    assert store.read_log(key, 42) == (b"", 42)
    writer = store.open_log(key)
    try:
        writer.write_line("first")
        data, offset = store.read_log(key)
        assert (data, offset) == (b"first\n", 6)
        writer.write_line("second line\n")
        writer.write_line("ünïcode")
        data, offset = store.read_log(key, offset)
        assert data == "second line\nünïcode\n".encode()
        assert store.read_log(key, offset) == (b"", offset)
    finally:
        writer.close()
    writer.close()  # closing twice is harmless
    assert store.log_location(key) == str(store.root / "logs" / "7" / "hello" / "1.log")
    assert Path(store.log_location(key)).is_absolute()


def test_reopened_log_appends(store: FsArtifactStore) -> None:
    reopened_log_appends(store)


@pytest.mark.parametrize("key", INVALID_LOG_KEYS)
def test_log_key_traversal_rejected(store: FsArtifactStore, key: str) -> None:
    assert_log_key_refused(store, key)


def test_build_manifest_roundtrip(store: FsArtifactStore) -> None:
    manifest_replaced(store)
    path = store.root / "builds" / "3" / "manifest.json"
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # no temp files left
