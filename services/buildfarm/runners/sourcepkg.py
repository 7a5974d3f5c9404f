"""A step's source as a runner gets it: the Debian source package (a .dsc and its files).

The farm hands every package step one deterministic ``.tar.gz`` holding the .dsc and every file
it names, flat (:func:`buildfarm.model.debsource.pack_source_package`); the runner builds that
.dsc (sbuild takes it as it is; ``dpkg-source -x`` unpacks it for dpkg-buildpackage).  A tarball
of a bare tree (steps recorded before source packages) is still accepted.

A *native* source package (format ``3.0 (native)``, or ``1.0`` without a diff) is one tarball
and nothing to apply: :func:`unpack_native` makes in process the tree ``dpkg-source -x`` makes
of it (its ~0.1 s of Perl start-up and five helper processes were a tenth of a trivial
package's step).  It takes only the shapes whose result is fully known: a valid version, one
tarball whose every checksum the .dsc lists matches, plain files, directories and symlinks
below one top directory, no special mode bits, no pax extensions, no symlink in ``debian/``.
Anything else (a quilt package, a hard link, a device, ...) returns False and the caller runs
``dpkg-source -x``, which also gives the errors.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

from debian.deb822 import Dsc

from buildfarm.model.errors import PermanentError
from buildfarm.model.sources import unpack_tree
from buildfarm.runners.process import BUILDER_UMASK


def unpack_step_source(tarball: Path, dest: Path) -> Path | None:
    """Unpack the step's source into ``dest``; the .dsc to build, or None for a bare tree."""
    unpack_tree(tarball, dest)
    if (dest / "debian" / "control").is_file():
        return None
    dscs = sorted(dest.glob("*.dsc"))
    if len(dscs) != 1:
        raise PermanentError(f"the step's source holds {len(dscs)} .dsc files, expected exactly 1")
    return dscs[0]


_VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*")
"""Versions dpkg-source accepts without a word (a subset: anything else is left to it)."""
_CHECKSUMS = {
    "Files": ("md5sum", "md5"),
    "Checksums-Sha1": ("sha1", "sha1"),
    "Checksums-Sha256": ("sha256", "sha256"),
}
"""The .dsc's checksum fields: each entry's key for its sum, and the hash."""
_COMPRESSIONS = ("gz", "xz", "bz2")
_KINDS = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE)


class _NotPlain(Exception):
    """The tarball holds something :func:`unpack_native` leaves to dpkg-source."""


def native_tarball(dsc_path: Path) -> tuple[Path, str] | None:
    """(the tarball, the format) of a native source package whose .dsc is ``dsc_path``, every
    checksum and size the .dsc gives checked; None when it is not one (or not a plain one)."""
    try:
        dsc = Dsc(dsc_path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    fmt, source, version = (str(dsc.get(f, "")).strip() for f in ("Format", "Source", "Version"))
    if fmt not in ("1.0", "3.0 (native)") or not _VERSION.fullmatch(version) or version.endswith("-"):
        return None
    if any(field.startswith("Checksums-") and field not in _CHECKSUMS for field in dsc):
        return None  # a checksum dpkg-source checks and this does not
    listed: list[tuple[str, str, str, int]] = []  # (file name, hash, sum, size)
    for field, (key, algorithm) in _CHECKSUMS.items():
        for entry in dsc.get(field) or []:
            size = str(entry.get("size", ""))
            if not size.isdigit():
                return None
            listed.append((str(entry.get("name", "")), algorithm, str(entry.get(key, "")).lower(), int(size)))
    names = {name for name, *_rest in listed}
    if len(names) != 1 or not any(algorithm == "sha256" for _n, algorithm, *_rest in listed):
        return None
    (name,) = names
    noepoch = version.split(":", 1)[-1]
    suffix = name.removeprefix(f"{source}_{noepoch}.tar.")
    if suffix == name or suffix not in _COMPRESSIONS or (fmt == "1.0" and suffix != "gz"):
        return None
    tarball = dsc_path.parent / name
    try:
        digests = {algorithm: hashlib.new(algorithm) for _n, algorithm, *_rest in listed}
        with tarball.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                for digest in digests.values():
                    digest.update(chunk)
        length = tarball.stat().st_size
    except OSError:
        return None
    if any(
        digests[algorithm].hexdigest() != expected or length != n for _n, algorithm, expected, n in listed
    ):
        return None
    return tarball, fmt


def fixed_mode(archived: int, directory: bool, umask: int = BUILDER_UMASK) -> int:
    """The permission bits dpkg-source -x leaves on a file or directory archived with mode
    ``archived``: tar's extraction under ``umask``, then its ``chmod -R u+r+w+X,g+r-w+X,...``
    (each class's r, w and X given or taken by the umask, X meaning "if a directory or already
    executable by someone", checked as chmod applies the changes one by one)."""
    mode = archived & 0o777 & ~umask
    allowed = 0o777 & ~umask
    for shift in (6, 3, 0):
        for bit in (4, 2, 1):
            value = bit << shift
            if bit == 1 and not (directory or mode & 0o111):
                continue  # X: no effect on a file nobody may execute
            mode = mode | value if allowed & value else mode & ~value
    return mode


def _chmod_directory(path: Path, archived: int) -> None:
    """A directory's fixed mode, keeping the set-group-id bit it inherited (as chmod's symbolic
    modes do)."""
    path.chmod((path.stat().st_mode & 0o7000) | fixed_mode(archived, True))


def unpack_native(dsc_path: Path, dest: Path) -> bool:
    """Make ``dest`` (new) the tree ``dpkg-source -x <dsc> <dest>`` makes of a native source
    package: same paths, contents, symlinks, permissions and modification times.  False (and
    nothing left behind) when the package is not one this takes (see the module's docstring)."""
    found = native_tarball(dsc_path)
    if found is None:
        return False
    tarball, fmt = found
    scratch = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f"{tarball.name}.tmp-extract."))
    try:
        top = _extract_plain(tarball, scratch)
        if top is None:
            return False
        source_dir = top / "debian" / "source"
        if fmt != "1.0" and source_dir.exists() and not source_dir.is_dir():
            return False  # dpkg-source cannot keep the format there: its error, not ours
        top.rename(dest)
    except _NotPlain:
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    debian = dest / "debian"
    if fmt != "1.0" and not (debian / "source" / "format").exists():  # dpkg-source keeps the format
        if not (debian / "source").exists():
            (debian / "source").mkdir()
            _chmod_directory(debian / "source", 0o777)
        (debian / "source" / "format").write_text(f"{fmt}\n")
        (debian / "source" / "format").chmod(0o666 & ~BUILDER_UMASK)
    rules = debian / "rules"
    rules.chmod(stat.S_IMODE(rules.lstat().st_mode) | 0o111)  # dpkg-source makes it executable
    return True


def _extract_plain(tarball: Path, scratch: Path) -> Path | None:
    """Extract ``tarball`` into ``scratch`` as tar and dpkg-source's ``chmod -R`` would; the one
    top directory made, None when the tarball is not of that shape.  :class:`_NotPlain` on the
    first member of another kind (checked as the stream is read: a large tarball is read once)."""
    directories: dict[str, float] = {}  # each directory made and its mtime, set once all is written
    seen: set[str] = set()
    with tarfile.open(tarball, mode="r|*") as tar:
        for member in tar:
            _check_plain(member, tar, seen, directories)
            seen.add(member.name)
            path = scratch / member.name
            if member.isdir():
                path.mkdir()
                _chmod_directory(path, member.mode)
                directories[member.name] = member.mtime
            elif member.issym():
                os.symlink(member.linkname, path)
                os.utime(path, (time.time(), member.mtime), follow_symlinks=False)
            else:
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with path.open("xb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                path.chmod(fixed_mode(member.mode, False))
                os.utime(path, (time.time(), member.mtime))
    for name in sorted(directories, reverse=True):  # tar sets a directory's times once it is filled
        os.utime(scratch / name, (time.time(), directories[name]))
    tops = [name for name in directories if "/" not in name]
    if len(tops) != 1:
        return None
    top = scratch / tops[0]
    rules = top / "debian" / "rules"
    if not (top / "debian").is_dir() or rules.is_symlink() or not rules.is_file():
        return None  # dpkg-source warns and goes on; the build then fails: its words, not ours
    return top


def _check_plain(
    member: tarfile.TarInfo, tar: tarfile.TarFile, seen: set[str], directories: dict[str, float]
) -> None:
    """:class:`_NotPlain` unless ``member`` is a plain file, directory or symlink with a plain
    relative name below a directory made before (never through a symlink), no special mode bits,
    no pax extensions, and not a symlink in ``debian/`` (whose targets dpkg-source checks)."""
    parts = PurePosixPath(member.name).parts
    parent = member.name.rpartition("/")[0]
    if (
        member.type not in _KINDS
        or member.pax_headers
        or tar.pax_headers
        or member.mode & 0o7000
        or not parts
        or ".." in parts
        or "/".join(parts) != member.name
        or member.name in seen
        or (parent and parent not in directories)
        or (not parent and not member.isdir())
        or (member.issym() and len(parts) > 1 and parts[1] == "debian")
    ):
        raise _NotPlain(member.name)
