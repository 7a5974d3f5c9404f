"""The merge rules of a local branch repository (buildfarm.backends.aptbranch), on records alone; and
how a build's .debs are read into records (describe, on real .debs)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from buildfarm.backends import apttree
from buildfarm.backends.aptbranch import (
    STATE_FILE,
    BinaryFile,
    SourceEntry,
    SourceFile,
    attach_sources,
    deb_fields,
    describe,
    merge,
    read_state,
    source_files_of,
    write_state,
)
from buildfarm.backends.base import PackageFile
from buildfarm.model.errors import PermanentError

from debpkgs import build_deb, build_source_package


def entry(source: str, version: str, build_id: int, *binaries: str) -> SourceEntry:
    files = tuple(
        BinaryFile(f"{b}_{version}_all.deb", f"{source}{version}{build_id}", 1, b, "all")
        for b in sorted(binaries or (source,))
    )
    return SourceEntry(source, version, build_id, files)


def test_newest_version_wins_in_debian_order_whatever_the_build_order() -> None:
    old, new = entry("tool", "1.9", 7), entry("tool", "1.10", 3)
    assert merge({"tool": old}, {"tool": new}, prefer_incoming=False) == {"tool": new}
    assert merge({"tool": new}, {"tool": old}, prefer_incoming=False) == {"tool": new}
    epoch = entry("tool", "1:0.1", 1)
    assert merge({"tool": new}, {"tool": epoch}, prefer_incoming=False) == {"tool": epoch}


def test_a_rebuild_of_the_same_version_goes_to_the_newer_build() -> None:
    first, rebuilt = entry("tool", "2.0", 4), entry("tool", "2.0", 9)
    assert merge({"tool": first}, {"tool": rebuilt}, prefer_incoming=False) == {"tool": rebuilt}
    assert merge({"tool": rebuilt}, {"tool": first}, prefer_incoming=False) == {"tool": rebuilt}


def test_a_new_version_takes_the_binaries_it_no_longer_builds_away() -> None:
    old = entry("lib", "1.0", 1, "lib1", "lib-dev", "lib-doc")
    new = entry("lib", "2.0", 2, "lib2", "lib-dev")
    other = entry("app", "1.0", 1)
    merged = merge({"lib": old, "app": other}, {"lib": new}, prefer_incoming=False)
    assert merged == {"lib": new, "app": other}


def test_a_binary_moved_to_another_source_goes_with_it() -> None:
    old = entry("big", "1.0", 1, "big", "helper")
    moved = entry("helper", "1.0", 2, "helper")
    merged = merge({"big": old}, {"helper": moved}, prefer_incoming=False)
    assert merged == {"big": entry("big", "1.0", 1, "big"), "helper": moved}
    alone = entry("solo", "1.0", 1, "solo")
    assert merge({"solo": alone}, {"x": entry("x", "1.0", 2, "solo")}, prefer_incoming=False) == {
        "x": entry("x", "1.0", 2, "solo")
    }


def test_a_personal_build_shows_its_own_packages_whatever_their_versions() -> None:
    branch, mine = entry("tool", "3.0", 5), entry("tool", "1.0", 6)
    assert merge({"tool": branch}, {"tool": mine}, prefer_incoming=False) == {"tool": branch}
    assert merge({"tool": branch}, {"tool": mine}, prefer_incoming=True) == {"tool": mine}


def test_source_packages_stay_with_their_entry_and_in_the_record(tmp_path: Path) -> None:
    src = (SourceFile("tool_1.0.dsc", "d" * 64, 10), SourceFile("tool_1.0.tar.xz", "t" * 64, 20))
    big = replace(entry("big", "1.0", 1, "big", "helper"), sources=src)
    merged = merge({"big": big}, {"helper": entry("helper", "1.0", 2)}, prefer_incoming=False)
    assert merged["big"].sources == src  # lost a binary, kept its source package
    assert source_files_of(merged) == sorted(src, key=lambda f: f.filename)
    write_state(tmp_path, merged)
    assert read_state(tmp_path, 9) == merged
    # A record written before source packages were recorded reads as having none.
    record = json.loads((tmp_path / STATE_FILE).read_text())
    for raw in record["sources"].values():
        del raw["sources"]
    (tmp_path / STATE_FILE).write_text(json.dumps(record))
    assert read_state(tmp_path, 9)["big"].sources == ()


def test_describe_reads_the_unrecorded_debs_at_once_and_keeps_the_recorded_ones(tmp_path: Path) -> None:
    """Many .debs, recorded and new interleaved: each new one read (by several dpkg-debs at once)
    as it alone would be, a recorded one not read at all, and the first damaged one named."""
    debs = [build_deb(tmp_path, f"bin{i}", "1.0", source=f"src{i % 3}") for i in range(9)]
    alone: dict[str, set[BinaryFile]] = {}
    for deb in debs:
        ((source, entry),) = describe([deb], 5).items()
        alone.setdefault(source, set()).update(entry.files)
    together = describe(debs, 5)
    assert {source: set(entry.files) for source, entry in together.items()} == alone
    assert {entry.version for entry in together.values()} == {"1.0"}
    recorded = {"src0": together["src0"]}
    for deb in debs:
        if deb.filename.startswith(("bin0_", "bin3_", "bin6_")):
            deb.path.unlink()  # recorded: never read again
    assert describe(debs, 5, known=recorded) == together
    damaged = [replace(d, sha256="0" * 64) if d.filename.startswith(("bin4_", "bin7_")) else d for d in debs]
    with pytest.raises(PermanentError, match=r"bin4_1\.0_all\.deb does not match its record"):
        describe(damaged, 5, known=recorded)


@pytest.mark.parametrize(
    ("source", "compression"),
    [("", "xz"), ("src-a", "gzip"), ("src-b (1.0-1)", "zstd"), ("src-c (2:1.0-1)", "none")],
)
def test_a_debs_fields_are_read_in_process_as_dpkg_deb_shows_them(
    tmp_path: Path, source: str, compression: str
) -> None:
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: bin\nVersion: 1.0-1+b1\nArchitecture: amd64\n"
        + (f"Source: {source}\n" if source else "")
        + "Maintainer: Farm Tests <tests@example.org>\nDescription: test\n"
    )
    deb = tmp_path / "bin.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Z", compression, "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )
    show = "${Package}\\t${Architecture}\\t${source:Package}\\t${source:Version}"
    shown = subprocess.run(
        ["dpkg-deb", "--show", f"--showformat={show}", str(deb)], check=True, capture_output=True, text=True
    ).stdout
    assert deb_fields(deb, deb.name) == tuple(shown.split("\t"))


def test_a_file_that_is_no_deb_is_not_indexed(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.deb"
    bogus.write_bytes(b"!<arch>\nnot really")
    with pytest.raises(PermanentError, match=r"could not index bogus\.deb"):
        deb_fields(bogus, bogus.name)


def _stanzas(kind: str, files: list[PackageFile], tmp_path: Path) -> dict[str, str]:
    """apt-ftparchive's stanzas of ``files`` by file name (as a publication reads its new ones)."""
    return apttree.index_files(tmp_path, "scratch-", kind, files)


@pytest.mark.parametrize("source", ["", "src-a", "src-b (1.0-1)", "src-c (2:1.0-1)"])
def test_a_debs_stanza_tells_what_reading_it_tells(tmp_path: Path, source: str) -> None:
    """A .deb described from its Packages stanza (apt-ftparchive read it) gives the record
    python-debian's reading gives, without it being read again."""
    deb = build_deb(tmp_path / "debs", "bin", "1.0-1+b1", architecture="amd64", source=source)
    read = describe([deb], 5)
    stanzas = _stanzas("packages", [deb], tmp_path)
    told = describe([deb], 5, indexed=stanzas)
    assert told == read
    deb.path.unlink()  # told from the stanza alone
    assert describe([deb], 5, indexed=stanzas) == read


def test_a_stanza_that_does_not_match_the_record_is_refused(tmp_path: Path) -> None:
    deb = build_deb(tmp_path / "debs", "bin", "1.0")
    stanzas = _stanzas("packages", [deb], tmp_path)
    with pytest.raises(PermanentError, match=r"bin_1\.0_all\.deb does not match its record"):
        describe([replace(deb, sha256="0" * 64)], 5, indexed=stanzas)
    with pytest.raises(PermanentError, match=r"does not match its record"):
        describe([replace(deb, size=deb.size + 1)], 5, indexed=stanzas)


def test_a_stanza_without_a_field_falls_back_to_reading_the_deb(tmp_path: Path) -> None:
    deb = build_deb(tmp_path / "debs", "bin", "1.0", source="src")
    (stanza,) = _stanzas("packages", [deb], tmp_path).values()
    broken = "".join(
        line for line in stanza.splitlines(keepends=True) if not line.startswith("Architecture:")
    )
    assert describe([deb], 5, indexed={deb.filename: broken}) == describe([deb], 5)


def test_a_dscs_stanza_tells_what_parsing_it_tells(tmp_path: Path) -> None:
    """A source package attached from its Sources stanza: the same record as from its parsed
    .dsc; a stanza that does not list the .dsc falls back to parsing it, and one whose .dsc
    checksum is not the record's is refused."""
    files = build_source_package(tmp_path / "src", "tool", "1.0-1")
    binaries = [f for f in files if f.filename.endswith(".deb")]
    sources = [f for f in files if not f.filename.endswith(".deb")]
    state = describe(binaries, 5)
    parsed = attach_sources(state, sources)
    stanzas = _stanzas("sources", sources, tmp_path)
    assert set(stanzas) == {f.filename for f in sources if f.filename.endswith(".dsc")}
    assert attach_sources(state, sources, indexed=stanzas) == parsed
    assert parsed["tool"].sources[0].filename == "tool_1.0-1.dsc" and len(parsed["tool"].sources) == 3
    ((dsc_name, stanza),) = stanzas.items()
    unlisted = stanza.replace(f" {dsc_name}\n", " elsewhere.dsc\n")
    assert attach_sources(state, sources, indexed={dsc_name: unlisted}) == parsed
    damaged = [replace(f, sha256="0" * 64) if f.filename == dsc_name else f for f in sources]
    with pytest.raises(PermanentError, match=r"tool_1\.0-1\.dsc does not match its record"):
        attach_sources(state, damaged, indexed=stanzas)
