"""Same tree, same hash and same tarball bytes, wherever the tree comes from."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from buildfarm.model.errors import PermanentError
from buildfarm.model.sources import TreeTooLargeError, copy_tree, pack_tree, tree_hash, unpack_tree


def _make(root: Path) -> Path:
    (root / "debian").mkdir(parents=True)
    (root / "debian" / "rules").write_text("#!/usr/bin/make -f\n%:\n\tdh $@\n")
    (root / "debian" / "rules").chmod(0o755)
    (root / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "link").symlink_to("main.c")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def test_same_tree_same_bytes_regardless_of_metadata(tmp_path: Path) -> None:
    a = _make(tmp_path / "a")
    b = _make(tmp_path / "b")
    os.utime(b / "main.c", (1, 1))
    (b / "main.c").chmod(0o600)
    (b / ".git" / "HEAD").write_text("other\n")
    assert tree_hash(a) == tree_hash(b)
    assert pack_tree(a) == pack_tree(b)


def test_roundtrip_keeps_the_tree_hash(tmp_path: Path) -> None:
    a = _make(tmp_path / "a")
    tarball = tmp_path / "src.tar.gz"
    tarball.write_bytes(pack_tree(a))
    unpack_tree(tarball, tmp_path / "out")
    assert tree_hash(tmp_path / "out") == tree_hash(a)
    assert os.access(tmp_path / "out" / "debian" / "rules", os.X_OK)
    assert not (tmp_path / "out" / ".git").exists()


def test_content_and_exec_bit_change_the_hash(tmp_path: Path) -> None:
    a = _make(tmp_path / "a")
    before = tree_hash(a)
    (a / "main.c").chmod(0o755)
    assert tree_hash(a) != before
    (a / "main.c").chmod(0o644)
    assert tree_hash(a) == before
    (a / "main.c").write_text("int main(void) { return 1; }\n")
    assert tree_hash(a) != before


def test_symlink_out_of_tree_is_refused(tmp_path: Path) -> None:
    a = _make(tmp_path / "a")
    (a / "evil").symlink_to("/etc/passwd")
    with pytest.raises(PermanentError, match="points outside the source tree"):
        tree_hash(a)


@pytest.fixture(params=["filters", "no-filters"])
def python_tarfile(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Python with PEP 706 extraction filters, and as Python 3.11 before 3.11.4 (Debian bookworm's
    python3, which the farm image has when built on Debian) without them."""
    if request.param == "no-filters":
        monkeypatch.delattr(tarfile, "data_filter")
        monkeypatch.delattr(tarfile, "FilterError")
        plain = tarfile.TarFile.extractall

        def extractall(self: tarfile.TarFile, path: str | Path = ".", **kwargs: object) -> None:
            if "filter" in kwargs:
                raise TypeError("TarFile.extractall() got an unexpected keyword argument 'filter'")
            plain(self, path, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)
    return str(request.param)


def test_unpack_without_filters_unpacks(tmp_path: Path, python_tarfile: str) -> None:
    a = _make(tmp_path / "a")
    tarball = tmp_path / "a.tar.gz"
    tarball.write_bytes(pack_tree(a))
    unpack_tree(tarball, tmp_path / "out")
    assert tree_hash(tmp_path / "out") == tree_hash(a)


def test_unpack_refuses_an_outside_symlink(tmp_path: Path, python_tarfile: str) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        link = tarfile.TarInfo("etc")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc"
        tar.addfile(link)
    with pytest.raises(PermanentError, match="unsafe member"):
        unpack_tree(evil, tmp_path / "out")


def test_unpack_refuses_traversal(tmp_path: Path, python_tarfile: str) -> None:
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../escaped")
    with pytest.raises(PermanentError, match=r"member '\.\./escaped' is absolute or escapes the tree"):
        unpack_tree(evil, tmp_path / "out")
    assert not (tmp_path / "escaped").exists()


def test_unpack_refuses_garbage(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(PermanentError, match="not a readable source tarball"):
        unpack_tree(junk, tmp_path / "out")


def test_a_tarball_that_inflates_past_the_limit_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "zeros").write_bytes(bytes(1 << 20))  # 1 MiB of zeros packs to about 1 KiB
    tarball = tmp_path / "src.tar.gz"
    tarball.write_bytes(pack_tree(tree))
    assert tarball.stat().st_size < 16 << 10
    with pytest.raises(PermanentError, match=r"unpacks to more than 65536 bytes"):
        unpack_tree(tarball, tmp_path / "out", max_bytes=64 << 10)
    unpack_tree(tarball, tmp_path / "ok", max_bytes=2 << 20)
    assert (tmp_path / "ok" / "zeros").stat().st_size == 1 << 20


def many_files(path: Path, count: int) -> Path:
    """A gzip tarball of ``count`` empty files: tiny on the wire, ``count`` inodes unpacked."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for index in range(count):
            tar.addfile(tarfile.TarInfo(f"f{index}"))
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    return path


def test_a_tarball_of_too_many_files_is_refused_before_writing_any(tmp_path: Path) -> None:
    bomb = many_files(tmp_path / "bomb.tar.gz", 301)
    out = tmp_path / "out"
    with pytest.raises(
        TreeTooLargeError, match=r"^bomb\.tar\.gz: holds more than 300 files and directories$"
    ):
        unpack_tree(bomb, out, max_files=300)
    assert list(out.iterdir()) == []  # refused on the headers alone: no inode spent
    unpack_tree(bomb, tmp_path / "ok", max_files=301)
    assert len(list((tmp_path / "ok").iterdir())) == 301


def test_unpacking_stops_at_its_time_bound(tmp_path: Path) -> None:
    slow = many_files(tmp_path / "slow.tar.gz", 600)
    # The clock is read every DEADLINE_CHECK_EVERY members: a bound already past stops it there.
    with pytest.raises(TreeTooLargeError, match=r"^slow\.tar\.gz: takes more than 1e-09s to unpack$"):
        unpack_tree(slow, tmp_path / "out", max_seconds=1e-9)


def test_an_absolute_member_is_refused(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("/etc/buildfarm-absolute")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    absolute = tmp_path / "abs.tar.gz"
    absolute.write_bytes(raw.getvalue())
    out = tmp_path / "out"
    with pytest.raises(
        PermanentError, match=r"member '/etc/buildfarm-absolute' is absolute or escapes the tree"
    ):
        unpack_tree(absolute, out)
    assert list(out.iterdir()) == []


def _entries_as_made(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root`` as dpkg-source's tar sees it: kind, mode, mtime (a symlink's
    is clamped by tar), contents or target."""
    found: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            found[path.relative_to(root).as_posix()] = ("l", os.readlink(path))
        elif path.is_dir():
            found[path.relative_to(root).as_posix()] = ("d", oct(st.st_mode), st.st_mtime)
        else:
            found[path.relative_to(root).as_posix()] = ("f", oct(st.st_mode), st.st_mtime, path.read_bytes())
    return found


def test_copy_tree_makes_what_unpacking_the_packed_tree_makes(tmp_path: Path, python_tarfile: str) -> None:
    """Each Python's extraction (directories' modes differ with filters): the same entries,
    modes, mtimes and contents, so dpkg-source -b of either is the same bytes."""
    a = _make(tmp_path / "a")
    (a / "debian" / "source").mkdir()
    (a / "debian" / "source" / "format").write_text("3.0 (native)\n")
    (a / "empty").mkdir(mode=0o750)
    (a / "main.c").chmod(0o664)
    (a / "script").write_text("#!/bin/sh\n")
    (a / "script").chmod(0o700)
    (a / "debian" / "up").symlink_to("../main.c")
    tarball = tmp_path / "a.tar.gz"
    tarball.write_bytes(pack_tree(a))
    unpack_tree(tarball, tmp_path / "unpacked")
    copy_tree(a, tmp_path / "copied")
    unpacked, copied = _entries_as_made(tmp_path / "unpacked"), _entries_as_made(tmp_path / "copied")
    assert copied == unpacked
    assert ".git" not in copied and copied["script"][1] == oct(0o100755)


def test_copy_tree_refuses_what_packing_refuses(tmp_path: Path) -> None:
    a = _make(tmp_path / "a")
    (a / "out").symlink_to("../../etc/passwd")
    with pytest.raises(PermanentError, match="points outside the source tree"):
        copy_tree(a, tmp_path / "copied")
