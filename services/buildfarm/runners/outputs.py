"""The worker's side of a builder pod's outputs archive: trust nothing in it until it is checked.

A package-builder pod (``buildtools/builder/buildfarm-step``) uploads one gzip tar through a
presigned PUT URL: ``result.json`` (version, ok, error, and name/sha256/size of each output) and
the outputs as ``outputs/<name>``. The pod runs a package's own build scripts, so the archive is
untrusted input: :func:`unpack_outputs` accepts only plain files with plain names and the
suffixes a build produces, writes nothing outside ``dest``, and checks every listed file's size
and sha256 while it is written. Anything else is a :class:`PermanentError` with one clear line,
and ``dest`` is left without any of the archive's files.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from buildfarm.model.errors import PermanentError
from buildfarm.model.types import FILE_OUTPUT_SUFFIXES, PACKAGE_SUFFIXES

ARCHIVE_VERSION = 1
RESULT_NAME = "result.json"
OUTPUTS_DIR = "outputs"
RESULT_MAX_BYTES = 1 << 20
"""result.json is a few hundred bytes; a larger one is refused before it is read into memory."""
MAX_FILES = 1000
"""A source package makes a handful of binaries; an archive listing more is refused."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class OutputsResult:
    """What the step reported: success and its outputs (written to ``dest``), or its error."""

    ok: bool
    error: str | None
    files: list[Path]


@dataclass(frozen=True)
class _Listed:
    name: str
    sha256: str
    size: int


def _bad(archive: Path, reason: str) -> PermanentError:
    return PermanentError(f"outputs archive {archive.name} rejected: {reason}")


def _check_name(archive: Path, name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or not name.endswith(FILE_OUTPUT_SUFFIXES):
        raise _bad(
            archive,
            f"output name {name!r} is not a plain file name ending in {', '.join(FILE_OUTPUT_SUFFIXES)}",
        )
    return name


def _parse_result(archive: Path, raw: bytes) -> tuple[bool, str | None, dict[str, _Listed]]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(archive, f"{RESULT_NAME} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != ARCHIVE_VERSION:
        raise _bad(archive, f"{RESULT_NAME} is not a version {ARCHIVE_VERSION} result object")
    ok, error, files = data.get("ok"), data.get("error"), data.get("files")
    if (
        not isinstance(ok, bool)
        or not (error is None or isinstance(error, str))
        or not isinstance(files, list)
    ):
        raise _bad(archive, f"{RESULT_NAME} needs ok (bool), error (string or null) and files (list)")
    if len(files) > MAX_FILES:
        raise _bad(archive, f"{RESULT_NAME} lists {len(files)} files, more than {MAX_FILES}")
    listed: dict[str, _Listed] = {}
    for entry in files:
        if not isinstance(entry, dict):
            raise _bad(archive, f"{RESULT_NAME}: a files entry is not an object")
        name = _check_name(archive, entry.get("name"))
        sha256, size = entry.get("sha256"), entry.get("size")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise _bad(archive, f"{RESULT_NAME}: {name} has no valid sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _bad(archive, f"{RESULT_NAME}: {name} has no valid size")
        if name in listed:
            raise _bad(archive, f"{RESULT_NAME} lists {name} twice")
        listed[name] = _Listed(name, sha256, size)
    if ok and error is not None:
        raise _bad(archive, f"{RESULT_NAME} says ok but also gives an error")
    if not ok and (error is None or listed):
        raise _bad(archive, f"{RESULT_NAME} says the build failed but gives no error or still lists files")
    if ok and not any(name.endswith(PACKAGE_SUFFIXES) for name in listed):
        raise _bad(archive, f"{RESULT_NAME} says ok but lists no .deb")
    return ok, error, listed


def _copy_hashed(source: IO[bytes], target: Path) -> tuple[str, int]:
    """Write a member to a new file (never over an existing one) and hash it on the way."""
    digest = hashlib.sha256()
    size = 0
    with target.open("xb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _unpack(archive: Path, tar: tarfile.TarFile, dest: Path, written: list[Path]) -> OutputsResult:
    result: tuple[bool, str | None, dict[str, _Listed]] | None = None
    found: dict[str, tuple[str, int]] = {}
    members = 0
    for member in tar:
        members += 1
        if members > MAX_FILES + 2:
            raise _bad(archive, f"more than {MAX_FILES} members")
        if member.name in (OUTPUTS_DIR, f"{OUTPUTS_DIR}/") and member.isdir():
            continue
        if not member.isfile():
            kind = "a link" if member.issym() or member.islnk() else "not a regular file"
            raise _bad(archive, f"member {member.name!r} is {kind}")
        if member.name == RESULT_NAME:
            if result is not None:
                raise _bad(archive, f"{RESULT_NAME} appears twice")
            if member.size > RESULT_MAX_BYTES:
                raise _bad(archive, f"{RESULT_NAME} is {member.size} bytes, more than {RESULT_MAX_BYTES}")
            handle = tar.extractfile(member)
            assert handle is not None  # a regular file always has a body
            result = _parse_result(archive, handle.read())
            continue
        prefix, _, name = member.name.partition("/")
        if prefix != OUTPUTS_DIR or not name:
            raise _bad(archive, f"unexpected member {member.name!r} (only {RESULT_NAME} and outputs/<name>)")
        _check_name(archive, name)
        if name in found:
            raise _bad(archive, f"{member.name} appears twice")
        handle = tar.extractfile(member)
        assert handle is not None
        target = dest / name
        written.append(target)
        found[name] = _copy_hashed(handle, target)
    if result is None:
        raise _bad(archive, f"it has no {RESULT_NAME}")
    ok, error, listed = result
    for name in found:
        if name not in listed:
            raise _bad(archive, f"outputs/{name} is not listed in {RESULT_NAME}")
    for entry in listed.values():
        if entry.name not in found:
            raise _bad(archive, f"{RESULT_NAME} lists {entry.name}, which is not in the archive")
        sha256, size = found[entry.name]
        if size != entry.size:
            raise _bad(archive, f"{entry.name} is {size} bytes, {RESULT_NAME} says {entry.size}")
        if sha256 != entry.sha256:
            raise _bad(archive, f"{entry.name} has sha256 {sha256}, {RESULT_NAME} says {entry.sha256}")
    if not ok:
        return OutputsResult(False, error, [])
    return OutputsResult(True, None, [dest / name for name in sorted(listed)])


def unpack_outputs(archive: Path, dest: Path) -> OutputsResult:
    """Check ``archive`` and write its outputs into ``dest`` (made if missing).

    Returns the step's outcome; raises :class:`PermanentError` naming the first problem: a member
    that is not a plain ``outputs/<name>`` file with an allowed suffix, a file not listed in
    result.json or listed but missing, a size or sha256 that differs, an output that already
    exists in ``dest``, or an unreadable archive. On error no file of the archive stays in ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            return _unpack(archive, tar, dest, written)
    except BaseException as exc:
        if isinstance(exc, FileExistsError):
            written.pop()  # the file that was already there is not ours to remove
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):
            raise _bad(archive, f"{Path(str(exc.filename)).name} already exists in {dest}") from exc
        if isinstance(exc, (tarfile.TarError, EOFError, OSError, ValueError)):
            raise _bad(archive, f"not a readable .tar.gz: {exc}") from exc
        raise
