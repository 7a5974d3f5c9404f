"""The source package cache's tree keys: one combined index read once a submit, not a file each."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from buildfarm.engine import srccache, srcpkg
from buildfarm.engine.srccache import SourceCache

from farmkit import make_test_context


def test_remembered_keys_are_found_in_the_index_alone(tmp_path: Path) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    stored = ctx.store.put_bytes(b"a source package")
    cache = SourceCache(ctx)
    cache.remember("k1", "source-key-1", stored.sha256)
    cache.save_trees()
    (cache.root / "k1").unlink()  # its own small file gone: the index answers
    assert SourceCache(ctx).lookup("k1", "test") == ("source-key-1", stored.sha256)
    assert SourceCache(ctx).lookup("k2", "test") is None
    ctx.db.dispose()


def test_a_key_only_in_its_small_file_joins_the_index(tmp_path: Path) -> None:
    """As after a concurrent save that won: the key is read from its small file, then indexed."""
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    stored = ctx.store.put_bytes(b"a source package")
    SourceCache(ctx).remember("k1", "source-key-1", stored.sha256)  # never saved: not indexed
    assert not (tmp_path / "state" / "work" / srccache.CACHE_DIR / srccache.KEYS_FILE).exists()
    cache = SourceCache(ctx)
    assert cache.lookup("k1", "test") == ("source-key-1", stored.sha256)
    cache.save_trees()
    (cache.root / "k1").unlink()
    assert SourceCache(ctx).lookup("k1", "test") == ("source-key-1", stored.sha256)
    ctx.db.dispose()


def test_an_indexed_key_whose_tarball_left_the_store_is_a_miss(tmp_path: Path) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    cache = SourceCache(ctx)
    cache.remember("k1", "source-key-1", "0" * 64)  # no such object in the store
    cache.save_trees()
    assert SourceCache(ctx).lookup("k1", "test") is None
    ctx.db.dispose()


def test_dpkg_source_version_is_asked_once_by_threads_asking_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packing threads start together: one ``dpkg-source --version`` run (~0.1 CPU s) answers all."""
    runs: list[list[str]] = []
    started = threading.Barrier(4)

    def run(args: list[str], **_kwargs: object) -> subprocess.CompletedProcess[str]:
        runs.append(args)
        time.sleep(0.05)  # a run takes a while: without the lock, the others would run it too
        return subprocess.CompletedProcess(args, 0, "Debian dpkg-source version 9.9.\n", "")

    monkeypatch.setattr(srccache.subprocess, "run", run)
    srccache._dpkg_source_version.cache_clear()
    answers: list[str] = []

    def ask() -> None:
        started.wait()
        answers.append(srccache.dpkg_source_version())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    srccache._dpkg_source_version.cache_clear()  # the real version for the tests after this one
    assert answers == ["Debian dpkg-source version 9.9."] * 4
    assert runs == [["dpkg-source", "--version"]]


def test_dpkg_source_version_is_asked_again_when_its_file_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade replaces dpkg-source: a long-lived process keys trees with the new version."""
    script = tmp_path / "dpkg-source"
    script.write_text("one\n")
    versions = iter(["Debian dpkg-source version 1.\n", "Debian dpkg-source version 2.\n"])

    def run(args: list[str], **_kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 0, next(versions), "")

    monkeypatch.setattr(srccache.subprocess, "run", run)
    monkeypatch.setattr(srccache, "dpkg_source_path", lambda: script)
    srccache._dpkg_source_version.cache_clear()
    try:
        assert srccache.dpkg_source_version() == "Debian dpkg-source version 1."
        assert srccache.dpkg_source_version() == "Debian dpkg-source version 1."  # asked once
        (tmp_path / "new").write_text("two\n")
        os.replace(tmp_path / "new", script)
        assert srccache.dpkg_source_version() == "Debian dpkg-source version 2."
    finally:
        srccache._dpkg_source_version.cache_clear()  # the real version for the tests after this one


def test_the_apis_warm_up_asks_the_version_before_any_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    """``srcpkg.warm_up`` (the API's start) asks ``dpkg-source --version``: the first submit's
    tree keys use that answer instead of waiting for the run (~0.1 s)."""
    runs: list[list[str]] = []

    def run(args: list[str], **_kwargs: object) -> subprocess.CompletedProcess[str]:
        runs.append(args)
        return subprocess.CompletedProcess(args, 0, "Debian dpkg-source version 9.8.\n", "")

    monkeypatch.setattr(srccache.subprocess, "run", run)
    srccache._dpkg_source_version.cache_clear()
    try:
        srcpkg.warm_up()
        assert runs == [["dpkg-source", "--version"]]
        assert srccache.dpkg_source_version() == "Debian dpkg-source version 9.8."
        assert runs == [["dpkg-source", "--version"]]  # answered from what the warm-up asked
    finally:
        srccache._dpkg_source_version.cache_clear()  # the real version for the tests after this one
