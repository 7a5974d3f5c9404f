"""The artifact stores' deletion API (retention, issue 7) on both real stores: a directory and a
real S3 server (moto).  The same tests run on each, as the engine sees them: through the
ArtifactStore protocol only.

The grace rule: ``delete_objects(older_than=cutoff)`` deletes only objects last written before
the cutoff, and putting stored content again counts as writing it (an upload in flight of
content that is about to be collected keeps it).  S3's Last-Modified has one-second
resolution, so each test waits for the next second once (~1 s) instead of faking a clock.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from buildfarm.backends.base import ArtifactStore, DeleteResult
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.backends.s3 import S3ArtifactStore
from buildfarm.model.errors import PermanentError

from s3kit import ACCESS_KEY, REGION, SECRET_KEY, MotoS3, running_moto_s3


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with running_moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(params=["fs", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "fs":
        fs = FsArtifactStore(tmp_path / "store")
        fs.check()
        return fs
    moto: MotoS3 = request.getfixturevalue("moto")
    s3 = S3ArtifactStore(
        moto.endpoint, ACCESS_KEY, SECRET_KEY, moto.new_bucket(), secure=False, region=REGION
    )
    s3.check()
    return s3


def _next_second() -> datetime:
    """Wait until the wall clock enters a new second; return that second (S3 dates have no finer grain)."""
    now = time.time()
    time.sleep(int(now) + 1 - now + 0.02)
    return datetime.fromtimestamp(int(time.time()), UTC)


def test_grace_rule_keeps_fresh_and_put_again_objects(store: ArtifactStore, tmp_path: Path) -> None:
    old = store.put_bytes(b"old, unreferenced\n" * 100)
    refreshed_file = tmp_path / "big.deb"
    refreshed_file.write_bytes(b"\x01" * 200_000)  # over REPUT_MAX_BYTES: S3 copies it onto itself
    again_file = store.put_file(refreshed_file)
    again_bytes = store.put_bytes(b"small, put again\n")
    cutoff = _next_second()
    fresh = store.put_bytes(b"uploaded after the cutoff\n")
    assert store.put_file(refreshed_file) == again_file  # an upload in flight of stored content
    assert store.put_bytes(b"small, put again\n") == again_bytes

    shas = [old.sha256, again_file.sha256, again_bytes.sha256, fresh.sha256, "0" * 64]
    result = store.delete_objects(shas, older_than=cutoff)

    assert result == DeleteResult(deleted=1, freed_bytes=old.size, skipped_recent=3)
    assert not store.has(old.sha256)
    assert store.object_size(old.sha256) is None
    for kept in (again_file, again_bytes, fresh):
        assert store.object_size(kept.sha256) == kept.size
    fetched = tmp_path / "fetched"
    store.fetch(again_file.sha256, fetched)
    assert fetched.read_bytes() == refreshed_file.read_bytes()
    # Idempotent: deleting again finds nothing; a later cutoff collects the rest.
    assert store.delete_objects([old.sha256], older_than=cutoff) == DeleteResult(0, 0, 0)
    later = store.delete_objects(shas, older_than=_next_second())
    assert later == DeleteResult(3, again_file.size + again_bytes.size + fresh.size, 0)


def test_deleted_object_can_be_stored_again(store: ArtifactStore) -> None:
    data = b"comes back\n"
    ref = store.put_bytes(data)
    assert store.delete_objects([ref.sha256], older_than=_next_second()).deleted == 1
    assert store.put_bytes(data) == ref
    assert store.object_size(ref.sha256) == len(data)


def test_naive_cutoff_is_refused(store: ArtifactStore) -> None:
    with pytest.raises(PermanentError, match="aware datetime"):
        store.delete_objects(["0" * 64], older_than=datetime(2020, 1, 1))


def test_delete_log_removes_every_part(store: ArtifactStore) -> None:
    key = "logs/7/hello/1.log"
    lines = [f"line {n} " + "x" * 50 for n in range(300)]
    writer = store.open_log(key)
    for line in lines[:150]:
        writer.write_line(line)
    if hasattr(writer, "flush"):
        writer.flush()  # S3: a first chunk, then the rest in a second one
    for line in lines[150:]:
        writer.write_line(line)
    writer.close()
    expected = "".join(f"{line}\n" for line in lines).encode()
    assert store.read_log(key)[0] == expected

    assert store.delete_log(key) == len(expected)
    assert store.read_log(key) == (b"", 0)
    assert store.delete_log(key) == 0  # absent: nothing to free
    if isinstance(store, S3ArtifactStore):
        assert store.list_object_sizes("logs/") == []  # no chunk, no joined copy
    else:
        assert isinstance(store, FsArtifactStore)
        assert not (store.root / "logs").exists()  # empty directories go too
    store.open_log(key).close()  # the key can be written again


def test_delete_build_manifest(store: ArtifactStore) -> None:
    store.put_build_manifest(12, {"project": "p", "packages": ["a"]})
    store.put_build_manifest(13, {"project": "p"})
    store.delete_build_manifest(12)
    store.delete_build_manifest(12)  # absent is fine
    assert store.get_build_manifest(12) is None
    assert store.get_build_manifest(13) == {"project": "p"}


def test_put_again_refreshes_last_modified_on_s3(moto: MotoS3, tmp_path: Path) -> None:
    s3 = S3ArtifactStore(
        moto.endpoint, ACCESS_KEY, SECRET_KEY, moto.new_bucket(), secure=False, region=REGION
    )
    path = tmp_path / "pkg.deb"
    path.write_bytes(b"\x02" * 100_000)
    ref = s3.put_file(path)
    name = s3.object_name(ref.sha256)
    first = s3.stat(name)
    _next_second()
    s3.put_file(path)
    second = s3.stat(name)
    assert first is not None and second is not None
    assert first.last_modified is not None and second.last_modified is not None
    assert second.last_modified > first.last_modified
    assert second.size == ref.size
    assert hashlib.sha256(s3.get_object_bytes(name)).hexdigest() == ref.sha256
