"""Submit packs each tree once: a tree submitted again reuses the source package made for it
(cached by tree key), and the trees of one submit are packed in threads (issue 16 part 5)."""

from __future__ import annotations

import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from buildfarm.engine import srccache, srcpkg
from buildfarm.engine.dpkgsource import DpkgSourceForks
from buildfarm.engine.submit import submit_build
from buildfarm.model import sources
from buildfarm.model.errors import PermanentError
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


def _examined(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, bool]]:
    """(tree name, thread name, facts given) of every SourceResolver.examine from now on."""
    seen: list[tuple[str, str, bool]] = []
    examine = srcpkg.SourceResolver.examine

    def recording(self: srcpkg.SourceResolver, index: int, package, tree, facts=None):  # type: ignore[no-untyped-def]
        seen.append((tree.name if tree else "", threading.current_thread().name, facts is not None))
        return examine(self, index, package, tree, facts)

    monkeypatch.setattr(srcpkg.SourceResolver, "examine", recording)
    return seen


def test_remembered_trees_are_examined_in_the_submitting_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the artifact store on this machine a remembered tree costs a few stat calls, made in
    the submitting thread (in threads they passed the GIL back and forth: a 5000-tree re-run
    took twice as long); a new tree is examined in the pack threads; with a remote store the
    remembered trees go to the threads too (their store lookups wait on the network), with
    their remembered facts (not read again)."""
    monkeypatch.setattr(srccache, "RACY_SECONDS", 0.0)  # the trees were written just now
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    src = tmp_path / "src"
    new = ["pk-five", "pk-six"]  # read in the pack threads
    for name in [*NAMES, *new]:
        make_package(src, name)
    first = _steps(ctx.db, submit_build(ctx, load_manifest(write_manifest(src, NAMES)), src, "u"))
    seen = _examined(monkeypatch)
    again = _steps(ctx.db, submit_build(ctx, load_manifest(write_manifest(src, [*NAMES, *new])), src, "u"))
    assert {n: again[n] for n in NAMES} == first
    main = threading.main_thread().name
    assert [(tree, thread == main, facts) for tree, thread, facts in seen[: len(NAMES)]] == [
        (n, True, True) for n in NAMES
    ]
    rest = seen[len(NAMES) :]
    assert sorted((tree, thread.startswith("pack"), facts) for tree, thread, facts in rest) == [
        (n, True, False) for n in new
    ]

    class RemoteStore:  # the same store, not known to lie on this machine
        def __init__(self, store: object) -> None:
            self._store = store

        def __getattr__(self, name: str) -> object:
            if name == "object_path":  # what makes a store LocalObjects
                raise AttributeError(name)
            return getattr(self._store, name)

    monkeypatch.setattr(ctx, "store", RemoteStore(ctx.store))
    parsed: list[Path] = []
    parse = srccache.read_source_info
    monkeypatch.setattr(
        srccache, "read_source_info", lambda tree, origin: (parsed.append(tree), parse(tree, origin))[1]
    )
    seen.clear()
    third = _steps(ctx.db, submit_build(ctx, load_manifest(write_manifest(src, NAMES)), src, "u"))
    assert third == first
    assert sorted((tree, thread.startswith("pack"), facts) for tree, thread, facts in seen) == sorted(
        (n, True, True) for n in NAMES
    )
    assert parsed == []
    ctx.db.dispose()


def _quilt(src: Path, name: str) -> Path:
    """A 3.0 (quilt) tree of version 1.0-1 with its upstream tarball beside it."""
    tree = make_package(src, name, version="1.0-1")
    (tree / "debian" / "source" / "format").write_text("3.0 (quilt)\n")
    with tarfile.open(src / f"{name}_1.0.orig.tar.gz", "w:gz") as tar:
        tar.add(tree / "payload.txt", f"{name}-1.0/payload.txt")
    return tree


def test_the_first_error_by_index_is_raised_whichever_thread_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remembered tree whose upstream tarball went away fails in the submitting thread, a new
    tree of a source format the farm does not take in a pack thread: the user is told of the
    first package in the manifest, and nothing after it is examined."""
    monkeypatch.setattr(srccache, "RACY_SECONDS", 0.0)
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    src = tmp_path / "src"
    _quilt(src, "pk-quilt")
    submit_build(ctx, load_manifest(write_manifest(src, ["pk-quilt"])), src, "u")
    (src / "pk-quilt_1.0.orig.tar.gz").unlink()
    bad = make_package(src, "pk-bad")
    (bad / "debian" / "source" / "format").write_text("3.0 (git)\n")
    seen = _examined(monkeypatch)

    with pytest.raises(PermanentError, match=r"packages\[0\] \(pk-bad\): source format '3.0 \(git\)'"):
        submit_build(ctx, load_manifest(write_manifest(src, ["pk-bad", "pk-quilt"])), src, "u")
    with pytest.raises(PermanentError, match=r"packages\[0\] \(pk-quilt\): .*needs the upstream tarball"):
        submit_build(ctx, load_manifest(write_manifest(src, ["pk-quilt", "pk-bad"])), src, "u")
    assert [tree for tree, _thread, _facts in seen][-1] == "pk-quilt"  # pk-bad not examined after it
    ctx.db.dispose()
