"""One flat APT repository tree, written whole in a temp directory, and the locks around it.

The pieces :mod:`buildfarm.backends.aptrepo` builds its trees from: packages placed by hardlink
(checked against their records), indexes by Debian's own ``apt-ftparchive``, the branch record
(:mod:`buildfarm.backends.aptbranch`) and the signature inside the same temp tree, symlinks
switched by ``os.replace``, and one ``fcntl`` lock per branch (or personal) directory that
serializes writers from any process.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from buildfarm.backends import aptbranch
from buildfarm.backends.aptbranch import BranchState
from buildfarm.backends.base import PackageFile
from buildfarm.backends.fs import file_sha256, fsync_dir
from buildfarm.backends.signing import ReleaseSigner
from buildfarm.model.debsource import source_package
from buildfarm.model.errors import PermanentError, ServiceUnavailableError

LOCK_FILE = ".lock"
LOCK_TIMEOUT_SECONDS = 120.0
"""Longest wait for another process's publish/stage of the same branch; indexing takes seconds."""
LOCK_POLL_SECONDS = 0.05
TOOL_TIMEOUT_SECONDS = 300.0
"""Bound on one apt-ftparchive run; it hashes every package, minutes only for gigabytes."""

_INDEXED_SUFFIX = ".deb"  # apt-ftparchive's default; .udeb files are stored but not indexed
_PACKAGE_SUFFIXES = (".deb", ".udeb")
_SOURCE_SUFFIXES = (".dsc", ".tar.gz", ".tar.xz", ".tar.bz2", ".tar.lzma", ".diff.gz", ".asc")
"""A source package's files: the .dsc, its tarballs (upstream, debian, component), .diff.gz, .asc."""
_FILENAME_FIELD = re.compile(r"^Filename: \./(.+)$", re.MULTILINE)
_SHA256_FIELD = re.compile(r"^SHA256: ([0-9a-f]{64})$", re.MULTILINE)
_SIZE_FIELD = re.compile(r"^Size: ([0-9]+)$", re.MULTILINE)


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``directory`` (created if needed), waiting at most the bound."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ServiceUnavailableError(
                        f"repository {directory} stayed locked for {LOCK_TIMEOUT_SECONDS:.0f}s",
                        retry_after=30.0,
                    ) from None
                time.sleep(LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def run_ftparchive(args: list[str], cwd: Path) -> bytes:
    exe = shutil.which("apt-ftparchive")
    if exe is None:
        raise PermanentError(
            "apt-ftparchive is not installed: install the Debian package apt-utils "
            "(apt-get install apt-utils)"
        )
    try:
        done = subprocess.run(
            [exe, *args],
            cwd=cwd,
            capture_output=True,
            timeout=TOOL_TIMEOUT_SECONDS,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnavailableError(
            f"apt-ftparchive {args[0]} in {cwd} took over {TOOL_TIMEOUT_SECONDS:.0f}s"
        ) from exc
    stderr = done.stderr.decode(errors="replace").strip()
    if done.returncode != 0:
        raise PermanentError(f"apt-ftparchive {args[0]} failed in {cwd}: {stderr}")
    if args == ["packages", "."]:
        # apt-ftparchive reports an unreadable .deb on stderr yet exits 0; an index missing a
        # package would publish a build that cannot be installed, so compare what it indexed.
        indexed = set(_FILENAME_FIELD.findall(done.stdout.decode("utf-8", "replace")))
        expected = {p.name for p in cwd.iterdir() if p.name.endswith(_INDEXED_SUFFIX)}
        if indexed != expected:
            raise PermanentError(
                f"apt-ftparchive could not index {', '.join(sorted(expected - indexed)) or 'some packages'}: "
                + stderr.replace("\n", "; ")
            )
    return done.stdout


def check_filename(filename: str) -> str:
    # Only package names: a file called "Release" or "Packages" would overwrite the indexes.
    plain = "/" not in filename and "\0" not in filename and not filename.startswith(".")
    if not plain or not filename.endswith(_PACKAGE_SUFFIXES + _SOURCE_SUFFIXES):
        raise PermanentError(
            f"invalid package file name {filename!r}: it must be one plain *.deb or *.udeb "
            "or a source package's file (.dsc and the files it names)"
        )
    return filename


def place(packages: list[PackageFile], into: Path, *, verify: bool = True) -> None:
    """Hardlink (same filesystem) or copy each package into ``into``, checking its sha256.

    ``verify=False`` is for packages carried over from a published tree: a hardlink of a file
    checked when it was first placed; only its size is compared (hashing every package of the
    branch again on each publish would cost minutes on a big branch).  Paths are plain strings
    here: a re-run of thousands of packages places tens of thousands of files.
    """
    seen: dict[str, str] = {}
    root = os.fspath(into)
    for package in packages:
        name = check_filename(package.filename)
        if name in seen:
            if seen[name] != package.sha256:
                raise PermanentError(f"two different packages are both named {name}")
            continue  # the same file listed twice is published once
        seen[name] = package.sha256
        dest = os.path.join(root, name)
        linked = True
        try:
            os.link(package.path, dest)
        except FileExistsError:
            raise PermanentError(f"two different packages are both named {name}") from None
        except OSError:
            if os.path.lexists(dest):
                raise PermanentError(f"two different packages are both named {name}") from None
            shutil.copyfile(package.path, dest)  # another filesystem, or links not allowed
            linked = False
        if verify or not linked:
            sha256, size = file_sha256(Path(dest))
        else:
            sha256, size = package.sha256, os.stat(dest).st_size
        if sha256 != package.sha256 or size != package.size:
            raise PermanentError(
                f"{package.path} does not match its record (sha256 {sha256}, {size} bytes; "
                f"expected {package.sha256}, {package.size} bytes)"
            )


def index_architectures(packages: bytes) -> list[str]:
    """The architectures a ``Packages`` index holds packages of (``all`` included), sorted."""
    found = {
        line.split(b":", 1)[1].strip().decode("ascii", "replace")
        for line in packages.splitlines()
        if line.startswith(b"Architecture:")
    }
    return sorted(found - {""})


def write_indexes(
    directory: Path,
    label: str,
    known: Path | None = None,
    placed: Mapping[str, tuple[str, int]] | None = None,
    indexed: Mapping[str, str] | None = None,
) -> None:
    """Write Packages, Packages.gz and Release of the flat repository ``directory``.

    A flat repository has one ``Packages`` index for every architecture (apt keeps the entries of
    the architectures it is configured for: ``dpkg --add-architecture arm64`` then
    ``apt-get download pkg:arm64``); ``Release`` names them in ``Architectures``.

    ``known`` is a published tree (``latest``) and ``placed`` the (sha256, size) of every file
    placed in ``directory``: a stanza of ``known``'s indexes whose own checksums name exactly
    what is placed here under those names is taken as it is, and apt-ftparchive reads only the
    other packages (:func:`reuse_stanzas`), so a no-change re-run opens no .deb.  The indexes are
    the same bytes a full run writes: stanzas by file name, each ending in a blank line.
    ``indexed`` are more stanzas to take so (by file name: :func:`index_files`' of the
    publication's own packages, written while it read them).

    ``Packages`` and ``Sources`` are independent (apt-ftparchive runs reading the tree, each
    index written and synced): they are made at once, a publication waits for the longer."""
    kinds = ["packages"]
    if any(directory.glob("*.dsc")):  # the build's source packages: apt-get source reads these
        kinds.append("sources")
    with ThreadPoolExecutor(max_workers=len(kinds), thread_name_prefix="index") as pool:
        made = [pool.submit(_write_kind, directory, kind, known, placed, indexed) for kind in kinds]
    for each in made:
        each.result()
    write_release(directory, label)


def _write_kind(
    directory: Path,
    kind: str,
    known: Path | None,
    placed: Mapping[str, tuple[str, int]] | None,
    indexed: Mapping[str, str] | None,
) -> None:
    """Write the index of ``kind`` ("packages": ``Packages``, "sources": ``Sources``) of
    ``directory`` and its ``.gz`` (:func:`write_indexes`)."""
    if placed is None or (known is None and not indexed):
        data = run_ftparchive([kind, "."], directory)
    else:
        data = reuse_stanzas(directory, kind, known, placed, indexed)
    _write_index(directory, "Packages" if kind == "packages" else "Sources", data, known)


def _write_index(directory: Path, name: str, data: bytes, known: Path | None) -> None:
    """Write the index ``name`` and its ``.gz``; when ``known`` (a published tree, which never
    changes) has the same index bytes, both are hardlinks of its files instead: a no-change
    re-run compresses nothing."""
    if known is not None and _same_bytes(known / name, data):
        try:
            for each in (name, f"{name}.gz"):
                os.link(known / each, directory / each)
            return
        except OSError:  # another filesystem, links not allowed, a .gz missing: write them
            for each in (name, f"{name}.gz"):
                (directory / each).unlink(missing_ok=True)
    write_file(directory / name, data)
    # mtime=0: the same index always gives the same .gz bytes.
    write_file(directory / f"{name}.gz", gzip.compress(data, mtime=0))


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def stanzas_of(text: str) -> list[str]:
    """The stanzas of an index, each ending in one newline."""
    return [chunk.strip("\n") + "\n" for chunk in text.split("\n\n") if chunk.strip("\n")]


def split_stanzas(text: str, field: re.Pattern[str] = _FILENAME_FIELD) -> dict[str, str]:
    """The stanzas of an index by what ``field`` (group 1) finds in each (``./`` file names)."""
    stanzas: dict[str, str] = {}
    for stanza in stanzas_of(text):
        found = field.search(stanza)
        if found is not None:
            stanzas[found.group(1)] = stanza
    return stanzas


def _checksums(stanza: str, kind: str) -> dict[str, tuple[str, int]]:
    """(sha256, size) by file name, as a stanza of an index of ``kind`` ("packages" or
    "sources") states them: a Packages stanza its one file's, a Sources stanza every file of its
    source package (the .dsc too).  Only the fields of that kind are looked for: a search for a
    field a stanza lacks reads all of it, and a re-run's indexes hold tens of thousands."""
    if kind == "packages":
        found = _SHA256_FIELD.search(stanza)
        size = _SIZE_FIELD.search(stanza)
        named = _FILENAME_FIELD.search(stanza)
        if found is not None and size is not None and named is not None:
            return {named.group(1): (found.group(1), int(size.group(1)))}
        return {}
    return aptbranch.stanza_source_files(stanza)


def reuse_stanzas(
    directory: Path,
    kind: str,
    known: Path | None,
    placed: Mapping[str, tuple[str, int]],
    indexed: Mapping[str, str] | None = None,
) -> bytes:
    """``apt-ftparchive packages .`` (``kind`` "packages") or ``sources .`` of ``directory``, with
    the stanzas of ``known``'s index (and of ``indexed``: stanzas by file name) that describe
    exactly the files placed here (every file a stanza states a checksum of is placed here with
    that sha256 and size) taken from it; the others come from one apt-ftparchive run over a
    scratch tree of hardlinks of just them."""
    suffix, index = (_INDEXED_SUFFIX, "Packages") if kind == "packages" else (".dsc", "Sources")
    wanted = sorted(name for name in os.listdir(directory) if name.endswith(suffix))
    try:
        old_text = (
            "" if known is None else (known / index).read_text(encoding="utf-8", errors="surrogateescape")
        )
    except FileNotFoundError:
        old_text = ""
    old: dict[str, str] = {}
    for stanza in [
        *stanzas_of(old_text),
        *(s for name, s in (indexed or {}).items() if name.endswith(suffix)),
    ]:
        listed = _checksums(stanza, kind)
        if listed and all(placed.get(name) == stated for name, stated in listed.items()):
            old.update({name: stanza for name in listed if name.endswith(suffix)})
    fresh = [name for name in wanted if name not in old]
    stanzas = {name: old[name] for name in wanted if name in old}
    if fresh:
        stanzas |= _index_alone(directory, kind, fresh)
    missing = [name for name in wanted if name not in stanzas]
    if missing:
        raise PermanentError(f"apt-ftparchive could not index {', '.join(missing)}")
    return "".join(stanzas[name] + "\n" for name in wanted).encode("utf-8", "surrogateescape")


def _index_alone(directory: Path, kind: str, names: list[str]) -> dict[str, str]:
    """The stanzas apt-ftparchive writes for ``names`` of ``directory`` (and, for a .dsc, the files
    it names), from a scratch tree of hardlinks of just them beside ``directory``."""
    linked: dict[str, Path] = {}
    for name in names:
        linked[name] = directory / name
        if kind == "sources":
            named = source_package(directory / name, name, check=False).files
            linked |= {f.name: directory / f.name for f in named}
    return _index_linked(directory.parent, f"{directory.name}-index-", kind, linked, set(names))


def index_files(parent: Path, prefix: str, kind: str, files: list[PackageFile]) -> dict[str, str]:
    """The stanzas apt-ftparchive writes for ``files`` (``kind`` "packages": of each .deb;
    "sources": of each .dsc, whose named files must be among ``files``), by file name, from one
    run over a scratch tree of hardlinks of them (copies across filesystems) made in ``parent``
    (named ``prefix``...): a publication reads its new packages once, for its record
    (:func:`.aptbranch.describe`) and for its indexes (:func:`write_indexes`' ``indexed``)."""
    suffix = _INDEXED_SUFFIX if kind == "packages" else ".dsc"
    wanted = {f.filename for f in files if f.filename.endswith(suffix)}
    if not wanted:
        return {}
    return _index_linked(parent, prefix, kind, {check_filename(f.filename): f.path for f in files}, wanted)


def _index_linked(
    parent: Path, prefix: str, kind: str, files: Mapping[str, Path], names: set[str]
) -> dict[str, str]:
    """The stanzas of ``names`` apt-ftparchive writes over a scratch tree in ``parent`` of
    hardlinks of ``files`` (name -> where it is), by file name."""
    scratch = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        for name, path in files.items():
            try:
                os.link(path, scratch / name)
            except OSError:
                shutil.copyfile(path, scratch / name)  # another filesystem, or links not allowed
        out = run_ftparchive([kind, "."], scratch).decode("utf-8", "surrogateescape")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    found: dict[str, str] = {}
    for stanza in stanzas_of(out):
        found.update({name: stanza for name in _checksums(stanza, kind) if name in names})
    return found


def write_release(directory: Path, label: str) -> None:
    """Write the Release file of the flat repository ``directory`` over the indexes it holds."""
    index = directory / "Packages"
    architectures = index_architectures(index.read_bytes() if index.exists() else b"")
    release = run_ftparchive(
        [
            *(
                ["-o", f"APT::FTPArchive::Release::Architectures={' '.join(architectures)}"]
                if architectures
                else []
            ),
            "-o",
            "APT::FTPArchive::Release::Origin=buildfarm",
            "-o",
            f"APT::FTPArchive::Release::Label={label}",
            "release",
            ".",
        ],
        directory,
    )
    write_file(directory / "Release", release)


def build_tree(
    parent: Path,
    prefix: str,
    packages: list[PackageFile],
    label: str,
    signer: ReleaseSigner | None = None,
    *,
    carried: list[PackageFile] | None = None,
    state: BranchState | None = None,
    known: Path | None = None,
    indexed: Mapping[str, str] | None = None,
) -> Path:
    """A complete, indexed (and, with ``signer``, signed) repository in a new hidden directory of
    ``parent``; removed on error.  ``carried`` are packages linked from a published tree (see
    :func:`place`), ``state`` the record of what the tree holds (:mod:`.aptbranch`), ``known`` a
    published tree whose index stanzas of the same files are taken, as are those of ``indexed``
    (:func:`write_indexes`)."""
    parent.mkdir(parents=True, exist_ok=True)
    with new_tree(parent, prefix) as tmp:
        place(packages, tmp)
        place(carried or [], tmp, verify=False)
        placed = {p.filename: (p.sha256, p.size) for p in [*packages, *(carried or [])]}
        write_indexes(tmp, label, known, placed if known is not None or indexed else None, indexed)
        if state is not None:
            aptbranch.write_state(tmp, state)
        if signer is not None:
            signer.sign(tmp)
    return tmp


@contextmanager
def new_tree(parent: Path, prefix: str) -> Iterator[Path]:
    """A new hidden directory of ``parent`` (named ``prefix``...) for the block to fill: made
    readable by all and synced when the block ends, removed if it fails."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the HTTP server may run as another user
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def switch_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (relative) in one atomic step."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.{time.time_ns()}")
    os.symlink(target, tmp)
    try:
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)  # a real directory cannot be replaced by a rename
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
