"""FsArtifactStore on a real directory: dedupe, atomic concurrent puts, corruption, logs, manifests."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from buildfarm.backends.base import ArtifactStore, ObjectRef
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.model.errors import NotFoundError, PermanentError


@pytest.fixture
def store(tmp_path: Path) -> FsArtifactStore:
    return FsArtifactStore(tmp_path / "artifacts")


def _stored_files(store: FsArtifactStore) -> list[Path]:
    return sorted(p for p in (store.root / "objects" / "sha256").rglob("*") if p.is_file())


def test_is_an_artifact_store(store: FsArtifactStore) -> None:
    as_protocol: ArtifactStore = store
    assert as_protocol is store


def test_put_bytes_is_content_addressed_and_stored_once(store: FsArtifactStore) -> None:
    data = b"hello farm\n"
    sha = hashlib.sha256(data).hexdigest()
    first = store.put_bytes(data)
    inode = store.object_path(sha).stat().st_ino
    second = store.put_bytes(data)
    assert first == second == ObjectRef(sha, len(data))
    assert store.object_path(sha) == store.root / "objects" / "sha256" / sha[:2] / sha
    assert _stored_files(store) == [store.object_path(sha)]
    # Existing content is not rewritten: same inode, no temp files left behind.
    assert store.object_path(sha).stat().st_ino == inode
    assert list((store.root / "objects" / "tmp").iterdir()) == []


def test_put_file_dedupes_with_put_bytes(store: FsArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "pkg.deb"
    source.write_bytes(b"\x00deb bytes" * 1000)
    ref = store.put_file(source)
    assert ref == store.put_bytes(source.read_bytes())
    assert store.has(ref.sha256)
    assert len(_stored_files(store)) == 1
    assert not store.has("0" * 64)


def test_concurrent_puts_of_same_content_from_threads(store: FsArtifactStore) -> None:
    data = os.urandom(3 * 1024 * 1024)  # several chunks, so writers really overlap
    start = threading.Barrier(8)
    refs: list[ObjectRef] = []
    errors: list[BaseException] = []

    def put() -> None:
        try:
            start.wait()
            refs.append(store.put_bytes(data))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(refs)) == 1
    assert _stored_files(store) == [store.object_path(refs[0].sha256)]
    assert store.object_path(refs[0].sha256).read_bytes() == data
    assert list((store.root / "objects" / "tmp").iterdir()) == []


def test_fetch_copies_verified_bytes(store: FsArtifactStore, tmp_path: Path) -> None:
    ref = store.put_bytes(b"payload")
    dest = tmp_path / "out" / "nested" / "payload.bin"
    store.fetch(ref.sha256, dest)
    assert dest.read_bytes() == b"payload"
    dest.write_bytes(b"changed by the consumer")
    assert store.object_path(ref.sha256).read_bytes() == b"payload"  # a copy, not the object itself


def test_fetch_missing_object(store: FsArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=f"artifact {'a' * 64} is not in the store"):
        store.fetch("a" * 64, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_fetch_detects_corruption_and_quarantines(store: FsArtifactStore, tmp_path: Path) -> None:
    ref = store.put_bytes(b"good bytes")
    path = store.object_path(ref.sha256)
    path.chmod(0o644)
    path.write_bytes(b"bad bytes!")
    dest = tmp_path / "fetched"
    with pytest.raises(PermanentError, match="is corrupt"):
        store.fetch(ref.sha256, dest)
    assert not dest.exists()  # nothing half-written
    assert not store.has(ref.sha256)  # moved aside ...
    assert len(list((store.root / "objects" / "corrupt").iterdir())) == 1
    store.put_bytes(b"good bytes")  # ... so storing it again heals the store
    store.fetch(ref.sha256, dest)
    assert dest.read_bytes() == b"good bytes"


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
    for line in ("a", "b"):
        writer = store.open_log("logs/1/s/1.log")
        writer.write_line(line)
        writer.close()
    assert store.read_log("logs/1/s/1.log") == (b"a\nb\n", 4)


@pytest.mark.parametrize(
    "key",
    [
        "../outside.log",
        "logs/../../x",
        "/etc/passwd",
        "logs//x",
        "logs/./x",
        "",
        "objects/sha256/aa/x",
        "builds/1/manifest.json",
        "logs\\..\\x",
    ],
)
def test_log_key_traversal_rejected(store: FsArtifactStore, key: str) -> None:
    with pytest.raises(PermanentError, match="invalid log key"):
        store.open_log(key)
    with pytest.raises(PermanentError, match="invalid log key"):
        store.read_log(key)
    with pytest.raises(PermanentError, match="invalid log key"):
        store.log_location(key)


def test_build_manifest_roundtrip(store: FsArtifactStore) -> None:
    assert store.get_build_manifest(3) is None
    store.put_build_manifest(3, {"project": "examples", "packages": [1, 2]})
    assert store.get_build_manifest(3) == {"project": "examples", "packages": [1, 2]}
    store.put_build_manifest(3, {"project": "other"})
    assert store.get_build_manifest(3) == {"project": "other"}
    path = store.root / "builds" / "3" / "manifest.json"
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # no temp files left
