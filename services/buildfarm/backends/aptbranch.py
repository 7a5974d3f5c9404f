"""What a branch's local repository holds: the union of its builds, newest version of each source.

A branch's ``latest`` is not one build's packages but everything the branch has built, as in
Pulp, where each build's packages are merged into the branch repository's newest version.  The
unit is the **source package**: a build brings every binary of each source package it built,
and its source package wins over the one already in the branch when its version is newer, or
equal and its build newer (a rebuild of the same version, e.g. against new build dependencies).
Winning replaces *all* of the older build's binaries of that source package, including binaries
the new version no longer builds, and any other source package's binary with the same name and
architecture (a binary moved between source packages; Pulp replaces by name and architecture
too).  A lower version never replaces a higher one, whatever the order builds publish in: the
result depends only on which builds were published (but for a binary that moved between source
packages, which goes with the source package merged last), so concurrent and late builds merge
right.  Pulp's backend merges with the same :func:`merge` (:mod:`buildfarm.backends.pulp.branchmerge`).

Each published tree carries ``buildfarm-sources.json``, the record this merge reads: per source
package its version, the build that brought it, its binaries and its source package (the .dsc
and the files it names), so a source package is carried forward with its binaries and
``apt-get source`` works on ``latest`` for every package of the branch.  A tree published before
the record existed is read from its ``Packages`` index (all of it taken as that build's own, with
no source package); a record written before source packages were carried has none either.

Nothing is ever removed from a branch except by a newer version of the same source package:
there is no removal request yet (the manifest has none either).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from debian.arfile import ArError
from debian.deb822 import Packages
from debian.debfile import DebError, DebFile
from debian.debian_support import Version

from buildfarm.backends.base import PackageFile
from buildfarm.backends.fs import file_sha256
from buildfarm.model.debsource import source_package
from buildfarm.model.errors import PermanentError

STATE_FILE = "buildfarm-sources.json"
STATE_FORMAT = 1
TOOL_TIMEOUT_SECONDS = 60.0
"""Bound on one ``dpkg-deb --show`` (a .deb python-debian cannot read): milliseconds."""
_SHOW_FORMAT = "${Package}\\t${Architecture}\\t${source:Package}\\t${source:Version}\\n"


@dataclass(frozen=True)
class BinaryFile:
    """One .deb (or .udeb) of a source package as the repository holds it."""

    filename: str
    sha256: str
    size: int
    package: str
    architecture: str


@dataclass(frozen=True)
class SourceFile:
    """One file of a source package: the .dsc or a file it names."""

    filename: str
    sha256: str
    size: int


@dataclass(frozen=True)
class SourceEntry:
    """One source package in a branch: its version, the build that brought it, its binaries and
    its source package's files (the .dsc first; none when the build published no source)."""

    name: str
    version: str
    build_id: int
    files: tuple[BinaryFile, ...]
    sources: tuple[SourceFile, ...] = ()

    def newer_than(self, other: SourceEntry) -> bool:
        if self.version == other.version:  # most merges (a re-run): no version parsed
            return self.build_id > other.build_id
        return (Version(self.version), self.build_id) > (Version(other.version), other.build_id)


def same_version(one: str, other: str) -> bool:
    """Whether two version strings name the same version (``1.0`` is ``1.00``); equal strings
    are not parsed: parsing took a second of a publish of thousands of source packages."""
    return one == other or Version(one) == Version(other)


BranchState = dict[str, SourceEntry]
"""Source package name -> what the branch holds of it."""


def _read_deb(package: PackageFile) -> tuple[BinaryFile, str, str]:
    """A .deb checked against its record and read: (its binary, source package, source version)."""
    sha256, size = file_sha256(package.path)
    if sha256 != package.sha256 or size != package.size:
        raise PermanentError(
            f"{package.path} does not match its record (sha256 {sha256}, {size} bytes; "
            f"expected {package.sha256}, {package.size} bytes)"
        )
    name, architecture, source, version = deb_fields(package.path, package.filename)
    return BinaryFile(package.filename, package.sha256, package.size, name, architecture), source, version


def deb_fields(path: Path, filename: str) -> tuple[str, str, str, str]:
    """(Package, Architecture, source package, source version) of a .deb, as ``dpkg-deb --show``'s
    ``${source:Package}`` and ``${source:Version}`` give them: from ``Source: name (version)``,
    else the binary's own name and version.  Read in this process (python-debian): a
    ``dpkg-deb`` (with its ``tar`` and ``rm``) for each .deb was most of a small build's
    publication."""
    try:
        deb = DebFile(filename=str(path))
        try:
            control = deb.debcontrol()
        finally:
            deb.close()
    except (ArError, DebError, OSError, tarfile.TarError, EOFError, ValueError, KeyError):
        return _dpkg_deb_fields(path, filename)  # what python-debian cannot read, dpkg-deb may
    name, architecture, version = (
        str(control.get(f, "")).strip() for f in ("Package", "Architecture", "Version")
    )
    fields = (name, architecture, *_source_of(name, version, str(control.get("Source", ""))))
    if not all(fields):
        raise PermanentError(f"could not index {filename}: no package fields")
    return fields


def _source_of(name: str, version: str, source_field: str) -> tuple[str, str]:
    """(source package, source version) of a binary package from its ``Source`` field
    (``name``, or ``name (version)``; none: the binary's own name and version)."""
    source, _, rest = source_field.strip().partition(" ")
    rest = rest.strip()
    source_version = rest[1:-1].strip() if rest.startswith("(") and rest.endswith(")") else version
    return source or name, source_version


_STANZA_FIELD = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*):[ \t]*(.*)$", re.MULTILINE)
_SHA256_BLOCK = re.compile(r"^Checksums-Sha256:\n((?: .*\n?)+)", re.MULTILINE)


def stanza_fields(stanza: str) -> dict[str, str]:
    """The fields of an index stanza (apt-ftparchive's) by name; of a field continued on more
    lines, its first line."""
    return {found.group(1): found.group(2).strip() for found in _STANZA_FIELD.finditer(stanza)}


def stanza_source_files(stanza: str) -> dict[str, tuple[str, int]]:
    """(sha256, size) by file name of every file a ``Sources`` stanza lists (the .dsc first, then
    the files it names, in its order)."""
    block = _SHA256_BLOCK.search(stanza)
    listed: dict[str, tuple[str, int]] = {}
    for line in block.group(1).splitlines() if block is not None else ():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            listed[parts[2]] = (parts[0], int(parts[1]))
    return listed


def _indexed_deb(package: PackageFile, stanza: str) -> tuple[BinaryFile, str, str] | None:
    """:func:`_read_deb` told from the ``Packages`` stanza apt-ftparchive wrote of the file (it
    read and hashed the bytes): None when the stanza lacks a field (the .deb is then read)."""
    fields = stanza_fields(stanza)
    stated = fields.get("SHA256"), fields.get("Size")
    if stated != (package.sha256, str(package.size)):
        raise PermanentError(
            f"{package.path} does not match its record (sha256 {stated[0]}, {stated[1]} bytes; "
            f"expected {package.sha256}, {package.size} bytes)"
        )
    name, architecture, version = (fields.get(f, "") for f in ("Package", "Architecture", "Version"))
    if not (name and architecture and version):
        return None
    source, source_version = _source_of(name, version, fields.get("Source", ""))
    return (
        BinaryFile(package.filename, package.sha256, package.size, name, architecture),
        source,
        source_version,
    )


def _dpkg_deb_fields(path: Path, filename: str) -> tuple[str, str, str, str]:
    exe = shutil.which("dpkg-deb")
    if exe is None:
        raise PermanentError(f"could not index {filename}: dpkg-deb is not installed (Debian package dpkg)")
    try:
        done = subprocess.run(
            [exe, "--show", f"--showformat={_SHOW_FORMAT}", "--", str(path)],
            capture_output=True,
            timeout=TOOL_TIMEOUT_SECONDS,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PermanentError(f"could not index {filename}: dpkg-deb took too long") from exc
    fields = done.stdout.decode("utf-8", "replace").rstrip("\n").split("\t")
    if done.returncode != 0 or len(fields) != 4 or not all(fields):
        stderr = done.stderr.decode("utf-8", "replace").strip().replace("\n", "; ")
        raise PermanentError(f"could not index {filename}: {stderr or 'no package fields'}")
    name, architecture, source, version = fields
    return name, architecture, source, version


def describe(
    packages: Iterable[PackageFile],
    build_id: int,
    known: BranchState | None = None,
    indexed: Mapping[str, str] | None = None,
) -> BranchState:
    """The source packages ``packages`` (one build's outputs) bring, read (:func:`deb_fields`)
    after checking each file against its record (a build with a damaged output publishes nothing,
    even when the damaged package would lose to a newer version).  A file ``known`` (a published
    tree's record: ``latest``) holds with the same name, sha256 and size is taken from it, not
    read again: the same bytes give the same fields.  A file of ``indexed`` (``Packages``
    stanzas by file name, apt-ftparchive's of these files) is told from its stanza, checked
    against the record by the sha256 and size it states.

    A build that somehow holds two versions of one source package brings the newest only.
    """
    recorded = {(f.filename, f.sha256, f.size): (f, e) for e in (known or {}).values() for f in e.files}
    packages = list(packages)
    by_source: dict[tuple[str, str], dict[str, BinaryFile]] = {}
    for package in packages:
        seen = recorded.get((package.filename, package.sha256, package.size))
        stanza = (indexed or {}).get(package.filename)
        told = _indexed_deb(package, stanza) if seen is None and stanza is not None else None
        if seen is not None:
            binary, source, version = seen[0], seen[1].name, seen[1].version
        elif told is not None:
            binary, source, version = told
        else:
            binary, source, version = _read_deb(package)
        by_source.setdefault((source, version), {})[package.filename] = binary
    state: BranchState = {}
    for (source, version), files in by_source.items():
        entry = SourceEntry(source, version, build_id, tuple(sorted(files.values(), key=_by_name)))
        if source not in state or entry.newer_than(state[source]):
            state[source] = entry
    return state


def attach_sources(
    state: BranchState,
    sources: Iterable[PackageFile],
    known: BranchState | None = None,
    indexed: Mapping[str, str] | None = None,
) -> BranchState:
    """``state`` (one build's, from :func:`describe`) with each source package of ``sources`` (the
    build's .dsc files and the files they name) given to the entry of the same name and version.

    Every file a .dsc names must be among ``sources`` with its sha256; a .dsc of no entry (a
    source package that built no binary of this state) is not recorded.  A .dsc ``known`` (a
    published tree's record) holds with the same sha256 is not parsed again: its record says
    its name, version and files; nor is one of ``indexed`` (``Sources`` stanzas by .dsc name,
    apt-ftparchive's of these files): its stanza says them, the .dsc's own sha256 and size
    checked against its record.
    """
    recorded = {(e.sources[0].filename, e.sources[0].sha256): e for e in (known or {}).values() if e.sources}
    by_name = {p.filename: p for p in sources}
    out = dict(state)
    for dsc in (p for p in by_name.values() if p.filename.endswith(".dsc")):
        seen = recorded.get((dsc.filename, dsc.sha256))
        told = _indexed_dsc(dsc, indexed[dsc.filename]) if indexed and dsc.filename in indexed else None
        if seen is not None:
            name, version = seen.name, seen.version
            named_files = [(f.filename, f.sha256) for f in seen.sources[1:]]
        elif told is not None:
            name, version, named_files = told
        else:
            package = source_package(dsc.path, dsc.filename, check=False)
            name, version = package.name, package.version
            named_files = [(f.name, f.sha256) for f in package.files]
        entry = out.get(name)
        if entry is None or not same_version(entry.version, version):
            continue
        files = [SourceFile(dsc.filename, dsc.sha256, dsc.size)]
        for named_name, named_sha256 in named_files:
            have = by_name.get(named_name)
            if have is None or have.sha256 != named_sha256:
                raise PermanentError(
                    f"{dsc.filename} names {named_name} (sha256 {named_sha256}), which the build "
                    + ("did not publish" if have is None else f"published as sha256 {have.sha256}")
                )
            files.append(SourceFile(have.filename, have.sha256, have.size))
        out[name] = replace(entry, sources=tuple(files))
    return out


def _indexed_dsc(dsc: PackageFile, stanza: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    """(name, version, [(file, sha256) it names]) of a .dsc from its ``Sources`` stanza; None when
    the stanza lacks one (the .dsc is then parsed, and says what is wrong)."""
    fields = stanza_fields(stanza)
    listed = stanza_source_files(stanza)
    stated = listed.get(dsc.filename)
    if stated is None:
        return None
    if stated != (dsc.sha256, dsc.size):
        raise PermanentError(
            f"{dsc.path} does not match its record (sha256 {stated[0]}, {stated[1]} bytes; "
            f"expected {dsc.sha256}, {dsc.size} bytes)"
        )
    named = [(name, sha256) for name, (sha256, _size) in listed.items() if name != dsc.filename]
    name, version = fields.get("Package", ""), fields.get("Version", "")
    if not (name and version and named):
        return None
    return name, version, named


def merge(
    base: Mapping[str, SourceEntry], incoming: Mapping[str, SourceEntry], *, prefer_incoming: bool
) -> BranchState:
    """``base`` with each source package of ``incoming`` that wins over it (see the module).

    ``prefer_incoming`` makes every incoming source package win (a personal build shows its own
    packages over the branch's, whatever their versions).
    """
    merged = dict(base)
    winners: list[SourceEntry] = []
    for name, entry in incoming.items():
        current = merged.get(name)
        if current is None or prefer_incoming or entry == current or entry.newer_than(current):
            merged[name] = entry
            winners.append(entry)
    taken = {(f.package, f.architecture): w.name for w in winners for f in w.files}
    for name, entry in list(merged.items()):
        kept = tuple(f for f in entry.files if taken.get((f.package, f.architecture), name) == name)
        if not kept:
            del merged[name]
        elif kept != entry.files:
            merged[name] = replace(entry, files=kept)
    return merged


def files_of(state: Mapping[str, SourceEntry]) -> list[BinaryFile]:
    return sorted((f for entry in state.values() for f in entry.files), key=_by_name)


def source_files_of(state: Mapping[str, SourceEntry]) -> list[SourceFile]:
    """Every source package file of ``state``, once each (two versions may share a tarball)."""
    unique = {f.filename: f for entry in state.values() for f in entry.sources}
    return [unique[name] for name in sorted(unique)]


def write_state(tree: Path, state: Mapping[str, SourceEntry]) -> None:
    """Write the record of ``tree`` (sorted keys: the same state always gives the same bytes)."""
    body = {
        "format": STATE_FORMAT,
        "sources": {name: _entry_record(entry) for name, entry in sorted(state.items())},
    }
    # No indent: json's C encoder then writes it (with indent, the pure Python one: seconds for
    # a branch of thousands of source packages, at every publish).
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    with (tree / STATE_FILE).open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _entry_record(entry: SourceEntry) -> dict[str, object]:
    """``dataclasses.asdict(entry)``, written out: asdict's deep copy took a second a publish of
    thousands of source packages."""
    return {
        "name": entry.name,
        "version": entry.version,
        "build_id": entry.build_id,
        "files": [
            {
                "filename": f.filename,
                "sha256": f.sha256,
                "size": f.size,
                "package": f.package,
                "architecture": f.architecture,
            }
            for f in entry.files
        ],
        "sources": [{"filename": f.filename, "sha256": f.sha256, "size": f.size} for f in entry.sources],
    }


_READ_CACHE_SIZE = 4
_read_cache: dict[tuple[str, int, int, int, int], BranchState] = {}
_read_lock = threading.Lock()


def read_state(tree: Path, build_id: int) -> BranchState:
    """The record of a published tree; from its ``Packages`` index when it predates the record
    (every package then counts as brought by ``build_id``, the tree's own build).

    A published tree never changes (it appears whole by one rename), so the record last read of
    the same file (path, inode, size, mtime) is given again: a publish reads ``latest``'s record
    once, not once to ask what it holds and again to merge onto it."""
    path = tree / STATE_FILE
    try:
        meta = path.stat()
    except FileNotFoundError:
        return _state_from_index(tree, build_id)
    except OSError as exc:
        raise PermanentError(f"{path} cannot be read: {exc}") from exc
    key = (str(path), meta.st_ino, meta.st_size, meta.st_mtime_ns, build_id)
    with _read_lock:
        cached = _read_cache.get(key)
    if cached is not None:
        return dict(cached)
    state = _read_state_file(path)
    with _read_lock:
        while len(_read_cache) >= _READ_CACHE_SIZE:
            del _read_cache[next(iter(_read_cache))]
        _read_cache[key] = state
    return dict(state)


def _read_state_file(path: Path) -> BranchState:
    try:
        body = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PermanentError(f"{path} cannot be read: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != STATE_FORMAT:
        raise PermanentError(f"{path} has an unknown format")
    state: BranchState = {}
    try:
        for name, raw in body["sources"].items():
            files = tuple(BinaryFile(**f) for f in raw["files"])
            sources = tuple(SourceFile(**f) for f in raw.get("sources", ()))
            state[name] = SourceEntry(raw["name"], raw["version"], int(raw["build_id"]), files, sources)
    except (KeyError, TypeError, AttributeError) as exc:
        raise PermanentError(f"{path} is damaged: {exc}") from exc
    return state


def _state_from_index(tree: Path, build_id: int) -> BranchState:
    index = tree / "Packages"
    by_source: dict[str, tuple[str, dict[str, BinaryFile]]] = {}
    with index.open("rb") as handle:
        for paragraph in Packages.iter_paragraphs(handle, use_apt_pkg=False):
            filename = paragraph["Filename"].removeprefix("./")
            binary = BinaryFile(
                filename,
                paragraph["SHA256"],
                int(paragraph["Size"]),
                paragraph["Package"],
                paragraph["Architecture"],
            )
            source, _, rest = paragraph.get("Source", paragraph["Package"]).partition(" ")
            version = rest.strip("() ") or paragraph["Version"]
            by_source.setdefault(source, (version, {}))[1][filename] = binary
    return {
        name: SourceEntry(name, version, build_id, tuple(sorted(files.values(), key=_by_name)))
        for name, (version, files) in by_source.items()
    }


def _by_name(binary: BinaryFile) -> str:
    return binary.filename
