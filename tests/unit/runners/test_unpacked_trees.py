"""The unpacked trees under the unshare runner's overlays: made once per tarball, never used
half-made, and evicted least recently used first, never while a step holds one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from buildfarm.runners.trees import UnpackedTrees, tree_key


class Unpacker:
    """Copies the tarball's bytes into ``dest/contents`` (what an unpack would put there)."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def __call__(self, tarball: Path, dest: Path) -> None:
        self.calls += 1
        dest.mkdir()
        (dest / "contents").write_bytes(tarball.read_bytes()[:1])  # half-way...
        if self.fail:
            raise RuntimeError("killed half-way")
        (dest / "contents").write_bytes(tarball.read_bytes())


def _trees(tmp_path: Path, keep: int = 2) -> tuple[UnpackedTrees, Unpacker]:
    unpack = Unpacker()
    return UnpackedTrees(tmp_path / "trees", unpack, shutil.rmtree, keep=keep), unpack


def _tarball(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_made_once_and_reused(tmp_path: Path) -> None:
    trees, unpack = _trees(tmp_path)
    tarball = _tarball(tmp_path, "env.tar", b"environment")
    with trees.lower(tarball) as first:
        assert (first / "contents").read_bytes() == b"environment"
    with trees.lower(tarball) as again:
        assert again == first
    assert unpack.calls == 1
    # a re-made tarball (a new file of the same name) is a new tree
    tarball.unlink()
    _tarball(tmp_path, "env.tar", b"environment, re-made")
    with trees.lower(tarball) as remade:
        assert (remade / "contents").read_bytes() == b"environment, re-made"
    assert unpack.calls == 2


def test_a_half_made_tree_is_never_used(tmp_path: Path) -> None:
    trees, unpack = _trees(tmp_path)
    tarball = _tarball(tmp_path, "env.tar", b"environment")
    unpack.fail = True
    with pytest.raises(RuntimeError), trees.lower(tarball):
        pass
    assert trees.trees() == []  # only the partial one, under its temporary name
    assert (trees.root / f".{tree_key(tarball)}.partial").is_dir()
    unpack.fail = False
    with trees.lower(tarball) as tree:
        assert (tree / "contents").read_bytes() == b"environment"
    assert not (trees.root / f".{tree_key(tarball)}.partial").exists()


def test_least_recently_used_go_first_but_not_while_held(tmp_path: Path) -> None:
    trees, _ = _trees(tmp_path, keep=1)
    a, b, c = (_tarball(tmp_path, f"{n}.tar", n.encode()) for n in "abc")
    with trees.lower(a) as tree_a:
        with trees.lower(b) as tree_b:
            pass  # b released: a is held, so b (the only one free) goes
        assert tree_a.is_dir() and not tree_b.exists()
        with trees.lower(c) as tree_c:
            pass
        assert tree_a.is_dir() and not tree_c.exists()
    lock = trees.root / f"{tree_key(a)}.lock"
    os.utime(lock, (1, 1))  # a used long ago
    with trees.lower(c) as tree_c:
        pass
    assert tree_c.is_dir() and not tree_a.exists()  # a, the least recently used and free, went
