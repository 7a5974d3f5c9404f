"""A native source package unpacked in process is the tree ``dpkg-source -x`` makes of it (paths,
contents, symlinks, permissions, modification times) and builds the same .deb; every other
shape is left to dpkg-source (nothing made, nothing left behind)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest
from debian.deb822 import Dsc

from buildfarm.runners.base import StepJob
from buildfarm.runners.host import HostRunner
from buildfarm.runners.process import BUILDER_UMASK
from buildfarm.runners.sourcepkg import fixed_mode, unpack_native

from debpkgs import build_source_package, make_package, tree_listing

ENV = {"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin", "TZ": "UTC"}

pytestmark = pytest.mark.skipif(shutil.which("dpkg-source") is None, reason="needs dpkg-dev")


def _source_package(tmp_path: Path, tree: Path, *options: str) -> Path:
    """``dpkg-source -b`` of ``tree`` (a copy named <name>-<version>); the .dsc."""
    work = tmp_path / "made"
    work.mkdir()
    name = tree.name
    copy = work / f"{name}-1.0"
    shutil.copytree(tree, copy, symlinks=True)
    subprocess.run(
        ["dpkg-source", *options, "-b", copy.name], cwd=work, check=True, capture_output=True, env=ENV
    )
    shutil.rmtree(copy)
    return work / f"{name}_1.0.dsc"


def _dpkg_x(dsc: Path, dest: Path) -> None:
    subprocess.run(
        ["dpkg-source", "-x", str(dsc), str(dest)],
        check=True,
        capture_output=True,
        env=ENV,
        umask=BUILDER_UMASK,  # as the host runner runs it
    )


def _same_as_dpkg(tmp_path: Path, dsc: Path) -> Path:
    """Unpack ``dsc`` both ways and assert the trees are the same; the in-process one."""
    since = time.time_ns()
    _dpkg_x(dsc, tmp_path / "by-dpkg")
    (tmp_path / "ours").mkdir()
    assert unpack_native(dsc, tmp_path / "ours" / "src") is True
    assert os.listdir(tmp_path / "ours") == ["src"]  # no scratch directory left
    assert tree_listing(tmp_path / "ours" / "src", since) == tree_listing(tmp_path / "by-dpkg", since)
    return tmp_path / "ours" / "src"


def _rich_tree(root: Path, fmt: str = "3.0 (native)") -> Path:
    """A native package with subdirectories, an empty one, odd modes, a symlink and old mtimes."""
    tree = make_package(root, "rich")
    (tree / "debian" / "source" / "format").write_text(f"{fmt}\n")
    (tree / "bin").mkdir()
    (tree / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (tree / "bin" / "tool").chmod(0o750)
    (tree / "secret").write_text("only mine\n")
    (tree / "secret").chmod(0o600)
    (tree / "shared").write_text("group writable\n")
    (tree / "shared").chmod(0o664)
    (tree / "empty").mkdir()
    (tree / "private").mkdir(mode=0o700)
    (tree / "private" / "notes").write_text("notes\n")
    os.symlink("payload.txt", tree / "payload-link")
    (tree / "debian" / "rules").chmod(0o644)  # dpkg-source -x makes it executable
    old = 1_600_000_000
    for path in [tree / "payload.txt", tree / "bin" / "tool", tree / "private"]:
        os.utime(path, (old, old), follow_symlinks=False)
    return tree


def test_a_trivial_native_package_unpacks_as_dpkg_source_does(tmp_path: Path) -> None:
    tree = make_package(tmp_path / "trees", "triv")
    _same_as_dpkg(tmp_path, _source_package(tmp_path, tree))


def test_modes_symlinks_empty_directories_and_times_are_dpkg_sources(tmp_path: Path) -> None:
    ours = _same_as_dpkg(tmp_path, _source_package(tmp_path, _rich_tree(tmp_path / "trees")))
    assert stat.S_IMODE((ours / "debian" / "rules").stat().st_mode) == 0o755
    assert stat.S_IMODE((ours / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((ours / "secret").stat().st_mode) == 0o644
    assert os.readlink(ours / "payload-link") == "payload.txt"


def test_a_format_named_only_on_the_command_line_is_kept_in_the_tree(tmp_path: Path) -> None:
    tree = _rich_tree(tmp_path / "trees")
    (tree / "debian" / "source" / "format").unlink()
    (tree / "debian" / "source").rmdir()
    ours = _same_as_dpkg(tmp_path, _source_package(tmp_path, tree, "--format=3.0 (native)"))
    assert (ours / "debian" / "source" / "format").read_text() == "3.0 (native)\n"


def test_a_native_1_0_package_unpacks_as_dpkg_source_does(tmp_path: Path) -> None:
    dsc = _source_package(tmp_path, _rich_tree(tmp_path / "trees", fmt="1.0"))
    assert Dsc(dsc.read_bytes())["Format"] == "1.0"
    _same_as_dpkg(tmp_path, dsc)


def test_the_mode_rules_are_chmods_for_other_umasks() -> None:
    assert fixed_mode(0o640, False) == 0o644
    assert fixed_mode(0o700, False) == 0o755
    assert fixed_mode(0o500, True) == 0o755
    assert fixed_mode(0o755, False, umask=0o077) == 0o700
    assert fixed_mode(0o644, False, umask=0o002) == 0o664
    assert fixed_mode(0o010, False, umask=0o022) == 0o755  # X: executable by someone, so by all


def _rewrite_tarball(dsc: Path, change: object) -> None:
    """Rewrite the package's tarball through ``change(members) -> members`` (TarInfo, data) and
    give the .dsc its new checksums, so only the tarball's shape differs."""
    fields = Dsc(dsc.read_bytes())
    name = fields["Checksums-Sha256"][0]["name"]
    tarball = dsc.parent / name
    with tarfile.open(tarball) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]  # type: ignore[union-attr]
    members = change(members)  # type: ignore[operator]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz", format=tarfile.GNU_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    data = buffer.getvalue()
    tarball.write_bytes(data)
    sums = {"md5sum": "md5", "sha1": "sha1", "sha256": "sha256"}
    for field in ("Files", "Checksums-Sha1", "Checksums-Sha256"):
        for entry in fields[field]:
            for key, algorithm in sums.items():
                if key in entry:
                    entry[key] = hashlib.new(algorithm, data).hexdigest()
            entry["size"] = str(len(data))
    dsc.write_bytes(fields.dump().encode())


def _left_to_dpkg(tmp_path: Path, dsc: Path) -> None:
    (tmp_path / "ours").mkdir()
    assert unpack_native(dsc, tmp_path / "ours" / "src") is False
    assert os.listdir(tmp_path / "ours") == []  # nothing made, nothing left


def test_a_quilt_package_is_left_to_dpkg_source(tmp_path: Path) -> None:
    files = build_source_package(tmp_path / "q", "quilted", "1.0-1")
    _left_to_dpkg(tmp_path, next(f.path for f in files if f.filename.endswith(".dsc")))


def test_a_hard_link_is_left_to_dpkg_source(tmp_path: Path) -> None:
    dsc = _source_package(tmp_path, make_package(tmp_path / "trees", "linked"))

    def add_link(members: list[tuple[tarfile.TarInfo, bytes]]) -> list[tuple[tarfile.TarInfo, bytes]]:
        link = tarfile.TarInfo("linked-1.0/hard")
        link.type, link.linkname = tarfile.LNKTYPE, "linked-1.0/payload.txt"
        return [*members, (link, b"")]

    _rewrite_tarball(dsc, add_link)
    _dpkg_x(dsc, tmp_path / "by-dpkg")  # dpkg-source takes it: the .dsc is sound
    _left_to_dpkg(tmp_path, dsc)


def test_a_symlink_in_debian_is_left_to_dpkg_source(tmp_path: Path) -> None:
    tree = make_package(tmp_path / "trees", "deblink")
    os.symlink("changelog", tree / "debian" / "NEWS")
    _left_to_dpkg(tmp_path, _source_package(tmp_path, tree))


def _setuid(members: list[tuple[tarfile.TarInfo, bytes]]) -> list[tuple[tarfile.TarInfo, bytes]]:
    for member, _data in members:
        if member.name.endswith("payload.txt"):
            member.mode |= 0o4000
    return members


def _stray(members: list[tuple[tarfile.TarInfo, bytes]]) -> list[tuple[tarfile.TarInfo, bytes]]:
    extra = tarfile.TarInfo("stray.txt")
    extra.size = 1
    return [*members, (extra, b"x")]


@pytest.mark.parametrize("change", [_setuid, _stray], ids=["setuid", "outside-the-top-directory"])
def test_a_setuid_file_or_a_member_outside_the_top_directory_is_left_to_dpkg_source(
    tmp_path: Path, change: object
) -> None:
    dsc = _source_package(tmp_path, make_package(tmp_path / "trees", "odd"))
    _rewrite_tarball(dsc, change)
    _left_to_dpkg(tmp_path, dsc)


def test_a_tarball_the_dsc_does_not_describe_is_left_to_dpkg_source(tmp_path: Path) -> None:
    dsc = _source_package(tmp_path, make_package(tmp_path / "trees", "changed"))
    tarball = next(tmp_path.glob("made/*.tar.xz"))
    tarball.write_bytes(tarball.read_bytes() + b"\0")
    _left_to_dpkg(tmp_path, dsc)  # dpkg-source then refuses it, in its own words


def test_the_host_runner_builds_the_same_deb_from_the_tree_unpacked_in_process(tmp_path: Path) -> None:
    """The runner's whole path: the in-process tree (said in the log) gives the .deb that
    dpkg-buildpackage makes in the tree of ``dpkg-source -x``."""
    dsc = _source_package(tmp_path, _rich_tree(tmp_path / "trees"))
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        for path in sorted(dsc.parent.iterdir()):
            tar.add(path, arcname=path.name)
    (tmp_path / "step.tar.gz").write_bytes(packed.getvalue())
    lines: list[str] = []
    job = StepJob(
        build_id=1,
        step_name="rich",
        attempt=1,
        source_tarball=tmp_path / "step.tar.gz",
        workdir=tmp_path / "job",
        extra_sources=[],
        log=lines.append,
        cancel=threading.Event(),
    )
    job.workdir.mkdir()
    result = HostRunner().run(job)
    assert result.ok, result.error
    assert any("unpacked in process" in line for line in lines)
    assert not any(line.startswith("dpkg-source: info: extracting") for line in lines)
    ours = next(p for p in result.outputs if p.name.endswith(".deb"))

    (tmp_path / "by-dpkg").mkdir()
    _dpkg_x(dsc, tmp_path / "by-dpkg" / "src")
    subprocess.run(
        ["dpkg-buildpackage", "-b", "-uc", "-us"],
        cwd=tmp_path / "by-dpkg" / "src",
        check=True,
        capture_output=True,
        env=ENV,
        umask=BUILDER_UMASK,
    )
    assert ours.read_bytes() == (tmp_path / "by-dpkg" / ours.name).read_bytes()


def test_the_host_runner_still_runs_dpkg_source_for_a_quilt_package(tmp_path: Path) -> None:
    files = build_source_package(tmp_path / "q", "quilted", "1.0-1")
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        for file in files[:-1]:  # the source package, not the .deb made beside it
            tar.add(file.path, arcname=file.filename)
    (tmp_path / "step.tar.gz").write_bytes(packed.getvalue())
    lines: list[str] = []
    job = StepJob(1, "quilted", 1, tmp_path / "step.tar.gz", tmp_path / "job", [], lines.append)
    job.workdir.mkdir()
    HostRunner().run(job)  # its debian/rules builds nothing: only how it was unpacked counts here
    assert any(line.startswith("dpkg-source: info: extracting quilted") for line in lines)
    assert not any("unpacked in process" in line for line in lines)
