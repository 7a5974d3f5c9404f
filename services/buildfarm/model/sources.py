"""Source trees travel as deterministic tarballs and are identified by a tree hash.

Two values, two jobs:

* the **tree hash** identifies *what is in the tree* (paths, kinds, executable bit, contents)
  and is the source part of a step's input key.  It is computed from an unpacked directory, so a
  tree read from a local checkout, a git clone or an uploaded tarball hashes the same;
* the **tarball** (``.tar.gz``) carries the tree to a builder.  It is deterministic too (sorted
  members, zero mtimes and owners, normalised modes, gzip without a timestamp): the same tree
  gives the same bytes, so the artifact store keeps one copy.

Version-control metadata (``.git``, ``.svn``, ...) is never part of a source tree.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from buildfarm.model.errors import PermanentError

VCS_DIRS = frozenset({".git", ".svn", ".hg", ".bzr", ".pc"})
_CHUNK = 1 << 20


def _entries(root: Path) -> Iterator[tuple[str, Path]]:
    """Yield (relative posix path, path) for everything below ``root``, sorted, VCS dirs skipped."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in VCS_DIRS)
        base = Path(dirpath)
        names = sorted(
            [*dirnames, *filenames],
        )
        for name in names:
            path = base / name
            yield path.relative_to(root).as_posix(), path


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_symlink(root: Path, path: Path, rel: str) -> str:
    target = os.readlink(path)
    resolved = (path.parent / target).resolve()
    if os.path.isabs(target) or not resolved.is_relative_to(root.resolve()):
        raise PermanentError(f"{root}: symlink {rel} -> {target} points outside the source tree")
    return target


def tree_hash(root: Path) -> str:
    """sha256 over the sorted entries of ``root``: path, kind, executable bit, content or target."""
    if not root.is_dir():
        raise PermanentError(f"{root}: not a directory")
    digest = hashlib.sha256(b"buildfarm-tree-v1\0")
    for rel, path in _entries(root):
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            record = f"l {rel}\0{_check_symlink(root, path, rel)}"
        elif stat.S_ISDIR(mode):
            record = f"d {rel}"
        elif stat.S_ISREG(mode):
            kind = "x" if mode & 0o111 else "f"
            record = f"{kind} {rel}\0{_file_digest(path)}"
        else:
            raise PermanentError(f"{root}: {rel} is neither a file, a directory nor a symlink")
        digest.update(record.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    if info.isdir() or (info.isfile() and info.mode & 0o111):
        info.mode = 0o755
    elif info.issym():
        info.mode = 0o777
    else:
        info.mode = 0o644
    return info


def pack_tree(root: Path) -> bytes:
    """The deterministic ``.tar.gz`` of ``root`` (members relative to it, no leading ``./``)."""
    tree_hash(root)  # validates: no escaping symlinks, no special files
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in _entries(root):
            info = _normalise(tar.gettarinfo(str(path), arcname=rel))
            info.pax_headers = {}
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


@functools.cache
def _extracted_mode(directory: bool, executable: bool, filtered: bool) -> int | None:
    """The mode :func:`unpack_tree` gives a directory or file of :func:`pack_tree`'s tarball
    (``filtered``: by PEP 706's data filter); None: a directory keeps the mode it is made with."""
    member = tarfile.TarInfo("entry")
    member.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    member.mode = 0o755 if executable else 0o644
    member = _normalise(member)
    return tarfile.data_filter(member, "/").mode if filtered else member.mode


def copy_tree(root: Path, dest: Path) -> None:
    """The tree ``unpack_tree`` makes in ``dest`` of ``pack_tree(root)``, made without the
    tarball (a small tree's ~4.7 ms CPU: ~1 ms): the same entries and contents, with the modes and
    mtimes the extraction leaves (those of the tarball's members, as the extraction filter lets
    them be: a directory then keeps the default mode it is made with; a symlink's and
    ``dest``'s own as made), so what is made of it (``dpkg-source -b``) is the same bytes.
    Refused as :func:`pack_tree` refuses."""
    tree_hash(root)  # validates: no escaping symlinks, no special files
    dest.mkdir(parents=True, exist_ok=True)
    filtered = hasattr(tarfile, "data_filter")  # as unpack_tree extracts
    made: list[tuple[str, int | None]] = []  # directories: their mode and mtime set last
    for rel, path in _entries(root):
        target = os.path.join(dest, rel)
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(path), target)
        elif stat.S_ISDIR(mode):
            extracted = _extracted_mode(True, True, filtered)
            os.mkdir(target, 0o777 if extracted is None else 0o700)  # as tarfile makes one
            made.append((target, extracted))
        else:
            shutil.copyfile(path, target)
            extracted = _extracted_mode(False, bool(mode & 0o111), filtered)
            os.chmod(target, 0o644 if extracted is None else extracted)  # (never None for a file)
            os.utime(target, (0, 0))
    for directory, extracted in reversed(made):
        if extracted is not None:
            os.chmod(directory, extracted)
        os.utime(directory, (0, 0))


_FILTER_ERRORS: tuple[type[Exception], ...] = (
    (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()  # PEP 706, Python >= 3.11.4
)


class TreeTooLargeError(PermanentError):
    """A source tarball over one of the bounds of :func:`unpack_tree` (the API answers 413)."""


DEADLINE_CHECK_EVERY = 256
"""Members between two looks at the clock while unpacking (a look costs a system call)."""


def _check_member(member: tarfile.TarInfo, name: str) -> None:
    if not (member.isfile() or member.isdir() or member.issym()):
        raise PermanentError(f"{name}: member {member.name} is not a file or directory")
    parts = PurePosixPath(member.name).parts
    # tarfile's data filter would quietly strip a leading "/": refuse it, as documented.
    if not parts or member.name.startswith("/") or ".." in parts:
        raise PermanentError(f"{name}: member {member.name!r} is absolute or escapes the tree")
    if member.issym():  # what the data filter refuses too, checked also where Python has no filters
        target = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise PermanentError(f"{name}: unsafe member: symlink {member.name} points outside the tree")


def unpack_tree(
    tarball: Path,
    dest: Path,
    max_bytes: int | None = None,
    *,
    max_files: int | None = None,
    max_seconds: float | None = None,
) -> None:
    """Unpack a source tarball into ``dest``, refusing members that would escape it (absolute
    paths included) and, past any bound given, a tarball that unpacks to more than ``max_bytes``
    bytes or ``max_files`` members (a small upload may inflate hugely, in bytes or in inodes) or
    that takes more than ``max_seconds`` (:class:`TreeTooLargeError`).

    Every member is checked before anything is written, reading headers one at a time, so a
    tarball over a bound is refused after reading at most ``max_files + 1`` headers.
    """
    dest.mkdir(parents=True, exist_ok=True)
    name = tarball.name
    deadline = None if max_seconds is None else time.monotonic() + max_seconds

    def check_clock(count: int) -> None:
        if deadline is not None and count % DEADLINE_CHECK_EVERY == 0 and time.monotonic() > deadline:
            raise TreeTooLargeError(f"{name}: takes more than {max_seconds:g}s to unpack")

    try:
        with tarfile.open(tarball, mode="r:gz") as tar:
            total = 0
            for count, member in enumerate(tar, 1):
                if max_files is not None and count > max_files:
                    raise TreeTooLargeError(f"{name}: holds more than {max_files} files and directories")
                _check_member(member, name)
                total += member.size
                if max_bytes is not None and total > max_bytes:
                    raise TreeTooLargeError(f"{name}: unpacks to more than {max_bytes} bytes")
                check_clock(count)

            def members() -> Iterator[tarfile.TarInfo]:
                for index, member in enumerate(tar.getmembers(), 1):
                    check_clock(index)
                    yield member

            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members(), filter="data")
            else:  # Python 3.11 before 3.11.4 (Debian bookworm's python3): _check_member is the guard
                tar.extractall(dest, members=members())
    except _FILTER_ERRORS as exc:
        raise PermanentError(f"{name}: unsafe member: {exc}") from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PermanentError(f"{name}: not a readable source tarball: {exc}") from exc
