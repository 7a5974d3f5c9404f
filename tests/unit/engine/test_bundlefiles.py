"""Bundle listings: a publication reads them from one combined index, not one file each."""

from __future__ import annotations

from pathlib import Path

from buildfarm.backends.base import StoredPackage
from buildfarm.engine import bundlefiles

A = "a" * 64
B = "b" * 64
FILES_A = [StoredPackage("a_1.0.dsc", "1" * 64, 10), StoredPackage("a_1.0.tar.xz", "2" * 64, 20)]
FILES_B: list[StoredPackage] = []  # a bare tree


def _small_files(work_root: Path) -> list[Path]:
    return [p for p in (work_root / bundlefiles.CACHE_DIR).iterdir() if p.name != bundlefiles.INDEX_FILE]


def test_remembered_listings_are_read_from_the_index(tmp_path: Path) -> None:
    bundlefiles.remember(tmp_path, {A: FILES_A, B: FILES_B})
    for small in _small_files(tmp_path):
        small.unlink()  # the index alone answers
    assert bundlefiles.listings(tmp_path, [A, B, "c" * 64]) == {A: FILES_A, B: FILES_B, "c" * 64: None}
    assert bundlefiles.listing(tmp_path, A) is None  # its own small file is gone


def test_a_listing_missing_from_the_index_is_read_and_added(tmp_path: Path) -> None:
    bundlefiles.remember(tmp_path, {A: FILES_A})
    (tmp_path / bundlefiles.CACHE_DIR / bundlefiles.INDEX_FILE).unlink()  # as if another writer won
    assert bundlefiles.listings(tmp_path, [A]) == {A: FILES_A}  # from its small file
    for small in _small_files(tmp_path):
        small.unlink()
    assert bundlefiles.listings(tmp_path, [A]) == {A: FILES_A}  # now from the index


def test_a_damaged_index_is_a_miss(tmp_path: Path) -> None:
    bundlefiles.remember(tmp_path, {A: FILES_A})
    (tmp_path / bundlefiles.CACHE_DIR / bundlefiles.INDEX_FILE).write_text("{not json")
    for small in _small_files(tmp_path):
        small.unlink()
    assert bundlefiles.listings(tmp_path, [A]) == {A: None}
