"""Debian source packages: a ``.dsc`` and the files it names, the unit a package step builds.

Whatever way the manifest names a package (a directory, a ``.dsc``, a name in the farm's
mirrors), it becomes one **source package**: a directory holding the ``.dsc`` and every file it
lists, each checked against the ``.dsc``'s SHA256.  That is what the builder gets (it runs
``dpkg-source -x`` or sbuild on the ``.dsc``), and the source part of the step's input key is
:func:`source_key`: a hash over the ``.dsc``'s identity and the sha256 of every file it names.
The same package fetched with ``dget`` or ``apt-get source`` therefore keys the same, signed or
not, and is built once.

This module only reads and checks files; making a source package from a tree (``dpkg-source
-b``) and fetching one are the engine's (:mod:`buildfarm.engine.srcpkg`).  Debian's tools do the
format work: patches are never applied here.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from debian.deb822 import Dsc

from buildfarm.model.errors import PermanentError
from buildfarm.model.manifest import PackageSource
from buildfarm.model.planner import read_source_info

_CHUNK = 1 << 20
MAX_DSC_BYTES = 1 << 20
"""A .dsc is a few KiB; a megabyte is not one."""
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.~_\-]*")
"""What dpkg-source writes into a .dsc: plain file names, never a path."""
FORMATS = ("1.0", "3.0 (native)", "3.0 (quilt)")
"""The Debian source formats the farm builds (``dpkg-source`` handles each)."""
ARMORED_KEY_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
TARBALL_SUFFIXES = (".gz", ".bz2", ".xz", ".lzma")
"""Compressions dpkg-source accepts for upstream tarballs (``orig.tar.{gz,bz2,xz,lzma}``)."""


@dataclass(frozen=True)
class DscFile:
    """One file a .dsc names, with the checksum and size the .dsc gives it."""

    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class SourcePackage:
    """A checked .dsc and the directory holding it and every file it names."""

    directory: Path
    dsc_name: str
    name: str
    version: str
    format: str
    files: tuple[DscFile, ...]

    @property
    def dsc_path(self) -> Path:
        return self.directory / self.dsc_name

    def paths(self) -> list[Path]:
        """The .dsc first, then its files in the .dsc's order."""
        return [self.dsc_path, *(self.directory / f.name for f in self.files)]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def upstream_version(version: str) -> str:
    """The version without epoch and Debian revision: the one in ``<name>_<upstream>.orig.tar.*``."""
    without_epoch = version.split(":", 1)[1] if ":" in version else version
    return without_epoch.rsplit("-", 1)[0] if "-" in without_epoch else without_epoch


def read_dsc(path: Path, what: str) -> Dsc:
    """Parse a .dsc (signed or not); one line naming ``what`` if it is not one."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PermanentError(f"{what}: cannot read {path.name}: {exc.strerror}") from exc
    if len(raw) > MAX_DSC_BYTES:
        raise PermanentError(f"{what}: {path.name} is larger than {MAX_DSC_BYTES} bytes; not a .dsc")
    try:
        dsc = Dsc(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PermanentError(f"{what}: {path.name} is not a .dsc: {exc}") from exc
    for field in ("Source", "Version", "Format", "Checksums-Sha256"):
        if not dsc.get(field):
            raise PermanentError(f"{what}: {path.name} has no {field} field")
    return dsc


def source_package(path: Path, what: str, *, check: bool = True) -> SourcePackage:
    """The source package whose .dsc is ``path``; with ``check`` every file it names must be
    beside it with the size and SHA256 the .dsc gives (a mismatch gives both sums)."""
    dsc = read_dsc(path, what)
    fmt = str(dsc["Format"]).strip()
    if fmt not in FORMATS:
        raise PermanentError(f"{what}: source format {fmt!r} is not one of {', '.join(FORMATS)}")
    files: list[DscFile] = []
    for entry in dsc["Checksums-Sha256"]:
        name = str(entry["name"])
        if not FILE_NAME.fullmatch(name) or name.endswith(".dsc"):
            raise PermanentError(f"{what}: {path.name} names {name!r}, which is not a plain file name")
        try:
            files.append(DscFile(name, str(entry["sha256"]).lower(), int(entry["size"])))
        except (KeyError, ValueError) as exc:
            raise PermanentError(f"{what}: {path.name}: bad Checksums-Sha256 line for {name}") from exc
    if not files:
        raise PermanentError(f"{what}: {path.name} names no files")
    package = SourcePackage(
        directory=path.parent,
        dsc_name=path.name,
        name=str(dsc["Source"]).strip(),
        version=str(dsc["Version"]).strip(),
        format=fmt,
        files=tuple(files),
    )
    if check:
        for file in package.files:
            check_file(package.directory / file.name, file, what)
    return package


def check_file(path: Path, expected: DscFile, what: str) -> None:
    """``path`` must exist with the size and sha256 the .dsc gives."""
    if not path.is_file():
        raise PermanentError(f"{what}: {expected.name} (named by the .dsc) is missing from {path.parent}")
    actual = file_sha256(path)
    if actual != expected.sha256:
        raise PermanentError(
            f"{what}: {expected.name}: sha256 mismatch: the .dsc says {expected.sha256}, "
            f"the file has {actual}"
        )
    if path.stat().st_size != expected.size:
        raise PermanentError(
            f"{what}: {expected.name}: size mismatch: the .dsc says {expected.size}, "
            f"the file has {path.stat().st_size}"
        )


def source_key(package: SourcePackage) -> str:
    """The source part of a step's input key: format, name, version and the sha256 of every file
    the .dsc names.  The .dsc's own bytes are left out on purpose: the same source package, with
    or without an OpenPGP signature around its .dsc, keys the same."""
    digest = hashlib.sha256(b"buildfarm-dsc-v1\0")
    digest.update(f"{package.format}\0{package.name}\0{package.version}\n".encode())
    for file in sorted(package.files, key=lambda f: f.name):
        digest.update(f"{file.name}\0{file.sha256}\0{file.size}\n".encode())
    return digest.hexdigest()


def is_upstream_file(name: str, source: str, version: str) -> bool:
    """Whether ``name`` is one of the package's upstream tarballs (main or component) or the
    signature of one: the files dpkg-source finds beside the tree rather than makes."""
    prefix = f"{source}_{upstream_version(version)}.orig"
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix) :].removesuffix(".asc")
    if rest.startswith("-"):
        component, _, rest = rest[1:].partition(".")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9\-]*", component):
            return False
        rest = "." + rest
    return rest in {f".tar{s}" for s in TARBALL_SUFFIXES}


def upstream_files_in(directory: Path, source: str, version: str) -> list[Path]:
    """The upstream tarballs (and their ``.asc``) of ``source`` ``version`` in ``directory``."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and is_upstream_file(p.name, source, version))


def upstream_files_beside(tree: Path, source: str, version: str) -> list[Path]:
    """The upstream files in the tree's parent, where ``dpkg-source -b`` looks for them."""
    return upstream_files_in(tree.parent, source, version)


def needs_upstream(fmt: str, version: str) -> bool:
    """3.0 (quilt) always has an upstream tarball; 1.0 has one unless the package is native
    (a version without a Debian revision)."""
    if fmt == "3.0 (quilt)":
        return True
    return fmt == "1.0" and "-" in version.split(":", 1)[-1]


def tree_format(tree: Path) -> str:
    """debian/source/format, or ``1.0`` when there is none (as dpkg-source reads it)."""
    path = tree / "debian" / "source" / "format"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return "1.0"
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentError(f"{tree}: cannot read debian/source/format: {exc}") from exc
    return text


def pack_source_package(package: SourcePackage) -> bytes:
    """The deterministic ``.tar.gz`` a builder gets: the .dsc and its files, flat, fixed metadata."""
    return pack_files(package.paths())


def pack_files(paths: list[Path]) -> bytes:
    """A deterministic flat ``.tar.gz`` of ``paths`` (by their names): same files, same bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(paths, key=lambda p: p.name):
            info = tarfile.TarInfo(path.name)
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=1) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def files_to_upload(package: PackageSource, root: Path, what: str) -> list[Path]:
    """The local files a remote client sends with a package, beside its tree tarball: a ``path``
    tree's upstream tarballs (found beside it, or named in ``orig`` by path), or a local ``dsc``
    and every file it names.  The farm cannot read the client's disk."""
    if package.dsc is not None and not package.dsc.startswith(("http://", "https://")):
        return source_package((root / package.dsc).resolve(), what).paths()
    local_origs = [(root / o.path).resolve() for o in package.orig if o.path is not None]
    if package.path is None:
        return local_origs
    if package.orig:
        return local_origs
    tree = (root / package.path).resolve()
    info = read_source_info(tree, package.describe())
    found = upstream_files_beside(tree, info.name, info.version)
    dsc = tree.parent / f"{info.name}_{info.version.split(':', 1)[-1]}.dsc"
    if dsc.is_file():  # the farm builds that .dsc as it is when the tree is what it unpacks to
        with contextlib.suppress(PermanentError):  # not usable: built with dpkg-source -b instead
            found += [p for p in source_package(dsc, what).paths() if p not in found]
    return found
