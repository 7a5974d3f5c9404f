"""buildfarm-step unpacks a source tarball only when every member stays inside the tree.

Debian 12's python3 (3.11.2, the builder image's) has no tarfile filters, so these tests take
them away here too: the entrypoint's own checks are what stands between a crafted tarball and
the builder's filesystem.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

import pytest

from buildfarm.model.debsource import pack_files
from buildfarm.model.sources import pack_tree, tree_hash

ENTRYPOINT = Path(__file__).parents[3] / "buildtools" / "builder" / "buildfarm-step"


@pytest.fixture
def step(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    loader = SourceFileLoader("buildfarm_step", str(ENTRYPOINT))
    spec = spec_from_loader("buildfarm_step", loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    return module


def _tarball(path: Path, members: list[tuple[str, bytes, bytes]]) -> Path:
    """Members as (name, type, body or link target)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == tarfile.SYMTYPE:
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                tar.addfile(info)
            elif kind in (tarfile.DIRTYPE, tarfile.CHRTYPE):
                info.type = kind
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


FILE, LINK, DIR = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        pytest.param([("../evil", FILE, b"x")], "member '../evil' escapes the tree", id="dotdot"),
        pytest.param([("/etc/evil", FILE, b"x")], "member '/etc/evil' escapes the tree", id="absolute"),
        pytest.param([("l", LINK, b"/etc")], "symlink l -> /etc points outside the tree", id="absolute-link"),
        pytest.param([("d/l", LINK, b"../..")], "symlink d/l -> ../.. points outside the tree", id="up-link"),
        pytest.param(
            # x/y is the root itself, so x/y/z -> ../.. is two levels above it, though it looks inside.
            [("x", DIR, b""), ("x/y", LINK, b".."), ("x/y/z", LINK, b"../.."), ("x/y/z/escaped", FILE, b"x")],
            "member 'x/y/z' lies under a symlink",
            id="link-chain",
        ),
        pytest.param(
            [("debian", LINK, b"elsewhere"), ("debian", FILE, b"x")],
            "member 'debian' appears twice",
            id="file-over-link",
        ),
        pytest.param([("dev", tarfile.CHRTYPE, b"")], "dev is not a file, directory or symlink", id="device"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(
    step: ModuleType, tmp_path: Path, members: list[tuple[str, bytes, bytes]], reason: str
) -> None:
    tarball = _tarball(tmp_path / "src.tar.gz", members)
    with pytest.raises(step.StepError) as caught:
        step.unpack_source(tarball, tmp_path / "src")
    assert str(caught.value) == f"unsafe source tarball: {reason}"
    assert caught.value.code == 2
    assert list((tmp_path / "src").iterdir()) == []


def test_a_packed_tree_unpacks_to_the_same_tree(step: ModuleType, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "debian" / "source").mkdir(parents=True)
    (tree / "debian" / "control").write_text("Source: x\n")
    (tree / "debian" / "rules").write_text("#!/usr/bin/make -f\n")
    (tree / "debian" / "rules").chmod(0o755)
    (tree / "docs").symlink_to("debian")
    tarball = tmp_path / "src.tar.gz"
    tarball.write_bytes(pack_tree(tree))
    step.unpack_source(tarball, tmp_path / "src")
    assert tree_hash(tmp_path / "src") == tree_hash(tree)


def test_not_a_tarball_or_no_debian_dir(step: ModuleType, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"<Error>AccessDenied</Error>")
    with pytest.raises(step.StepError, match=r"^the source tarball is not a readable \.tar\.gz: "):
        step.unpack_source(junk, tmp_path / "a")
    empty = _tarball(tmp_path / "empty.tar.gz", [("README", FILE, b"hi")])
    with pytest.raises(step.StepError, match=r"neither debian/control at its top nor exactly one \.dsc"):
        step.unpack_source(empty, tmp_path / "b")


def test_presigned_urls_are_logged_without_their_signature(step: ModuleType) -> None:
    url = "http://127.0.0.1:9000/bucket/sha256/ab/abcd?X-Amz-Credential=k&X-Amz-Signature=secret"
    assert step.redact(url) == "http://127.0.0.1:9000/bucket/sha256/ab/abcd"


def test_a_bomb_of_tiny_files_or_bytes_or_time_is_refused_before_anything_is_written(
    step: ModuleType, tmp_path: Path
) -> None:
    bomb = _tarball(tmp_path / "bomb.tar.gz", [(f"f{i}", FILE, b"") for i in range(300)])
    with pytest.raises(step.StepError, match=r"^the source tarball holds more than 299 members$"):
        step.unpack_tarball(bomb, tmp_path / "a", "source tarball", max_members=299)
    assert list((tmp_path / "a").iterdir()) == []
    big = _tarball(tmp_path / "big.tar.gz", [("zeros", FILE, bytes(1 << 16))])
    with pytest.raises(step.StepError, match=r"^the image context unpacks to more than 1024 bytes$"):
        step.unpack_tarball(big, tmp_path / "b", "image context", max_bytes=1024)
    assert list((tmp_path / "b").iterdir()) == []
    with pytest.raises(step.StepError, match=r"^the source tarball takes more than 1e-09s to unpack$"):
        step.unpack_tarball(bomb, tmp_path / "c", "source tarball", max_seconds=1e-9)
    assert step.unpack_tarball(bomb, tmp_path / "d", "source tarball", max_members=300) == 300


def test_a_source_package_gives_its_dsc(step: ModuleType, tmp_path: Path) -> None:
    """The farm's step source is a Debian source package, flat: the entrypoint finds its .dsc
    (and dpkg-source -x unpacks it); a tarball with two .dsc files is refused."""
    files = []
    for name in ("p_1.0-1.dsc", "p_1.0.orig.tar.gz", "p_1.0-1.debian.tar.xz"):
        (tmp_path / name).write_bytes(b"x")
        files.append(tmp_path / name)
    tarball = tmp_path / "srcpkg.tar.gz"
    tarball.write_bytes(pack_files(files))
    assert step.unpack_source(tarball, tmp_path / "out").name == "p_1.0-1.dsc"
    (tmp_path / "q_1.dsc").write_bytes(b"x")
    two = tmp_path / "two.tar.gz"
    two.write_bytes(pack_files([*files, tmp_path / "q_1.dsc"]))
    with pytest.raises(step.StepError, match=r"nor exactly one \.dsc"):
        step.unpack_source(two, tmp_path / "out2")
