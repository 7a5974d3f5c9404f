"""Submit packs each tree once: a tree submitted again reuses the source package made for it
(cached by tree key), and the trees of one submit are packed in threads (issue 16 part 5)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from buildfarm.engine import srccache, srcpkg
from buildfarm.engine.dpkgsource import DpkgSourceForks
from buildfarm.engine.submit import submit_build
from buildfarm.model import sources
from buildfarm.model.manifest import load_manifest
from buildfarm.state.db import Database
from buildfarm.state.models import Step

from debpkgs import make_package, write_manifest
from farmkit import make_test_context

NAMES = ["pk-one", "pk-two", "pk-three", "pk-four"]


def _steps(db: Database, build_id: int) -> dict[str, tuple[str, str]]:
    with db.session() as session:
        rows = session.execute(
            select(Step.name, Step.input_key, Step.source_sha256).where(Step.build_id == build_id)
        )
        return {name: (key, sha) for name, key, sha in rows}


def test_a_tree_submitted_again_is_not_packed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    src = tmp_path / "src"
    for name in NAMES:
        make_package(src, name)
    manifest = load_manifest(write_manifest(src, NAMES))
    packed: list[tuple[str, str]] = []  # (tree, thread) of every dpkg-source -b
    dpkg_source = srcpkg._dpkg_source

    def counted(args: list[str], cwd: Path, what: str, forks: DpkgSourceForks | None = None) -> None:
        if args[0] == "-b":
            packed.append((args[1], threading.current_thread().name))
        dpkg_source(args, cwd, what, forks)

    monkeypatch.setattr(srcpkg, "_dpkg_source", counted)
    first = submit_build(ctx, manifest, src, "alice")
    assert sorted(tree for tree, _thread in packed) == sorted(f"{n}-1.0" for n in NAMES)
    assert all(thread.startswith("pack") for _tree, thread in packed)  # in the submit's threads

    second = submit_build(ctx, manifest, src, "alice")
    assert len(packed) == len(NAMES)  # nothing packed again
    assert _steps(ctx.db, second) == _steps(ctx.db, first)  # same source packages, same keys

    (src / "pk-two" / "payload.txt").write_text("changed\n")
    third = submit_build(ctx, manifest, src, "alice")
    assert [tree for tree, _thread in packed[len(NAMES) :]] == ["pk-two-1.0"]  # only the changed tree
    before, after = _steps(ctx.db, first), _steps(ctx.db, third)
    assert {name for name in NAMES if before[name] != after[name]} == {"pk-two"}
    ctx.db.dispose()


def test_the_directory_of_the_trees_is_listed_once_per_submit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every tree's upstream files are looked for beside it: listing the shared directory for
    each tree made a submit of thousands of packages quadratic (minutes at 5000)."""
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    src = tmp_path / "src"
    for name in NAMES:
        make_package(src, name)
    manifest = load_manifest(write_manifest(src, NAMES))
    listed: list[Path] = []
    iterdir = Path.iterdir

    def counting(self: Path) -> Iterator[Path]:
        if self == src:
            listed.append(self)
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", counting)
    build_id = submit_build(ctx, manifest, src, "u")
    assert len(_steps(ctx.db, build_id)) == len(NAMES)
    assert len(listed) == 1  # was once per tree
    ctx.db.dispose()


def test_an_unchanged_tree_is_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tree whose every entry has the stat it had is neither hashed nor parsed again; a file
    rewritten with its size and mtime put back is (its ctime moved): a new input key."""
    monkeypatch.setattr(srccache, "RACY_SECONDS", 0.0)  # the trees were written just now
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    src = tmp_path / "src"
    for name in NAMES:
        make_package(src, name)
    manifest = load_manifest(write_manifest(src, NAMES))
    first = _steps(ctx.db, submit_build(ctx, manifest, src, "u"))

    read: list[str] = []  # every file a tree hash reads, every tree whose debian/control is parsed
    digest, parse = sources._file_digest, srccache.read_source_info
    monkeypatch.setattr(sources, "_file_digest", lambda path: (read.append(str(path)), digest(path))[1])
    monkeypatch.setattr(
        srccache, "read_source_info", lambda tree, origin: (read.append(str(tree)), parse(tree, origin))[1]
    )
    assert _steps(ctx.db, submit_build(ctx, manifest, src, "u")) == first
    assert read == []  # was every file of every tree, and each tree's control and changelog

    payload = src / NAMES[0] / "payload.txt"
    before = payload.stat()
    payload.write_bytes(bytes(b ^ 1 for b in payload.read_bytes()))  # same size
    os.utime(payload, ns=(before.st_atime_ns, before.st_mtime_ns))
    changed = _steps(ctx.db, submit_build(ctx, manifest, src, "u"))
    assert changed[NAMES[0]][0] != first[NAMES[0]][0]
    assert {n: changed[n] for n in NAMES[1:]} == {n: first[n] for n in NAMES[1:]}
    ctx.db.dispose()


def test_remembered_trees_read_no_format_and_rewrite_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-run of remembered trees takes their source format from the record too, and leaves
    the record as it is (nothing new to remember); a new tree is remembered beside them."""
    monkeypatch.setattr(srccache, "RACY_SECONDS", 0.0)  # the trees were written just now
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    src = tmp_path / "src"
    for name in [*NAMES, "pk-five"]:
        make_package(src, name)
    manifest = load_manifest(write_manifest(src, NAMES))
    first = _steps(ctx.db, submit_build(ctx, manifest, src, "u"))
    record = ctx.work_root / srccache.CACHE_DIR / srccache.TREES_FILE
    written = record.stat()

    formats: list[Path] = []
    fmt = srcpkg.tree_format
    for module in (srccache, srcpkg):
        monkeypatch.setattr(module, "tree_format", lambda tree: (formats.append(tree), fmt(tree))[1])
    assert _steps(ctx.db, submit_build(ctx, manifest, src, "u")) == first
    assert formats == []  # was one read of debian/source/format a tree
    again = record.stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)

    more = load_manifest(write_manifest(src, [*NAMES, "pk-five"]))
    assert set(_steps(ctx.db, submit_build(ctx, more, src, "u"))) == {*NAMES, "pk-five"}
    assert formats == [(src / "pk-five").resolve()]
    assert len(srccache.SourceCache(ctx)._load_trees()) == len(NAMES) + 1
    ctx.db.dispose()
