"""Output identities of real .deb files: build dates, member order and compression aside."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from buildfarm.model.debcompare import compare_debs, describe_deb, output_identity
from buildfarm.model.errors import PermanentError

from debpkgs import make_package


def _deb(
    workdir: Path,
    *,
    epoch: int,
    compression: str = "xz",
    payload: str = "hello\n",
    depends: str = "libc6 (>= 2.36)",
) -> Path:
    """A real package made by dpkg-deb at the given SOURCE_DATE_EPOCH (its files' times too)."""
    tree = workdir / f"tree-{epoch}-{compression}-{abs(hash((payload, depends)))}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: libgreet1\nVersion: 1.0\nArchitecture: all\nMaintainer: tests <t@buildfarm.invalid>\n"
        f"Depends: {depends}\nDescription: greeting library\n"
    )
    (tree / "DEBIAN" / "postinst").write_text("#!/bin/sh\nexit 0\n")
    (tree / "DEBIAN" / "postinst").chmod(0o755)
    lib = tree / "usr" / "lib" / "libgreet"
    lib.mkdir(parents=True)
    (lib / "greet.txt").write_text(payload)
    (lib / "link").symlink_to("greet.txt")
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    deb = workdir / f"{tree.name}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
    )
    return deb


def test_packages_built_at_other_times_and_compressions_compare_equal(tmp_path: Path) -> None:
    old = _deb(tmp_path, epoch=1_700_000_000, compression="xz")
    new = _deb(tmp_path, epoch=1_800_000_000, compression="gzip")
    assert old.read_bytes() != new.read_bytes()  # the dates (and the compression) differ
    assert compare_debs(old, new) == []
    assert output_identity([old]) == output_identity([new])


def test_a_changed_file_content_compares_different(tmp_path: Path) -> None:
    old = _deb(tmp_path, epoch=1_700_000_000)
    new = _deb(tmp_path, epoch=1_700_000_000, payload="hello, world\n")
    assert compare_debs(old, new) == ["data member usr/lib/libgreet/greet.txt: sha256 differ"]
    assert output_identity([old]) != output_identity([new])


def test_a_changed_depends_compares_different(tmp_path: Path) -> None:
    old = _deb(tmp_path, epoch=1_700_000_000)
    new = _deb(tmp_path, epoch=1_700_000_000, depends="libc6 (>= 2.38)")
    assert compare_debs(old, new) == ["control field Depends: 'libc6 (>= 2.36)' -> 'libc6 (>= 2.38)'"]
    assert output_identity([old]) != output_identity([new])


def test_description_keeps_modes_owners_links_and_maintainer_scripts(tmp_path: Path) -> None:
    described = describe_deb(_deb(tmp_path, epoch=1_700_000_000))
    members = {m["name"]: m for m in described["data"]}
    assert members["usr/lib/libgreet/link"]["link"] == "greet.txt"
    assert members["usr/lib/libgreet/greet.txt"]["owner"] == "0:0:root:root"
    assert [m["name"] for m in described["control"]] == [".", "postinst"]  # md5sums follows the data
    assert described["fields"]["Package"] == "libgreet1"
    assert "mtime" not in str(described)


def test_identity_leaves_buildinfo_out_and_refuses_a_broken_package(tmp_path: Path) -> None:
    deb = _deb(tmp_path, epoch=1_700_000_000)
    buildinfo = tmp_path / "libgreet_1.0_amd64.buildinfo"
    buildinfo.write_text("Build-Date: Mon, 01 Jan 2024 00:00:00 +0000\n")
    alone = output_identity([deb])
    buildinfo.write_text("Build-Date: Tue, 02 Jan 2024 00:00:00 +0000\n")
    assert output_identity([deb, buildinfo]) == alone
    broken = tmp_path / "broken_1.0_all.deb"
    broken.write_bytes(b"!<arch>\nnot a package")
    with pytest.raises(PermanentError, match=r"broken_1\.0_all\.deb: not a readable Debian package"):
        output_identity([broken])


def _dpkg_buildpackage(source: Path, epoch: int) -> Path:
    """Build the source tree with the real dpkg-buildpackage; return its one .deb, moved aside."""
    subprocess.run(
        ["dpkg-buildpackage", "-b", "-uc", "-us", "--no-check-builddeps"],
        cwd=source,
        check=True,
        capture_output=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C.UTF-8"},
    )
    (built,) = source.parent.glob("libgreet_*.deb")
    return Path(shutil.move(built, source.parent / f"built-{epoch}-{len(list(source.parent.iterdir()))}.deb"))


def test_the_same_source_built_twice_by_dpkg_buildpackage_compares_equal(tmp_path: Path) -> None:
    source = make_package(tmp_path / "src", "libgreet", payload="greetings\n")
    first = _dpkg_buildpackage(source, 1_700_000_000)
    second = _dpkg_buildpackage(source, 1_700_086_400)
    assert first.read_bytes() != second.read_bytes()
    assert output_identity([first]) == output_identity([second])
    (source / "payload.txt").write_text("greetings, changed\n")
    third = _dpkg_buildpackage(source, 1_700_086_400)
    assert compare_debs(second, third) == ["data member usr/share/doc/libgreet/payload.txt: sha256 differ"]
    assert output_identity([second]) != output_identity([third])
