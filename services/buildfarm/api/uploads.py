"""Uploaded source trees and image contexts: checked when they arrive, unpacked at submit.

Both go through :func:`buildfarm.model.sources.unpack_tree` within the API's bounds (bytes,
members, seconds: a small upload may inflate hugely, in bytes or in inodes), so a tarball over
one is refused in one line (413) wherever it is unpacked, and an unsafe one (400) too.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from buildfarm.api.errors import BadSourceError, TooLargeError
from buildfarm.backends.base import ObjectRef
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import PermanentError
from buildfarm.model.manifest import ImageSource, PackageSource
from buildfarm.model.sources import TreeTooLargeError, unpack_tree


def accept_tarball(farm: FarmContext, tarball: Path) -> ObjectRef:
    """Check that an upload is a safe source tarball (no member escapes), then store it."""
    with tempfile.TemporaryDirectory(dir=farm.work_root, prefix="check-") as scratch:
        try:
            _unpack_bounded(farm, tarball, Path(scratch))
        except TooLargeError as exc:
            raise TooLargeError(str(exc).replace(tarball.name, "upload")) from exc
        except PermanentError as exc:
            raise BadSourceError(str(exc).replace(tarball.name, "upload")) from exc
    return farm.store.put_file(tarball)


def _unpack_bounded(farm: FarmContext, tarball: Path, dest: Path) -> None:
    """unpack_tree within the API's bounds (bytes, files, seconds); over one: TooLargeError (413)."""
    settings = farm.settings
    try:
        unpack_tree(
            tarball,
            dest,
            settings.api.max_unpacked_bytes,
            max_files=settings.api.max_unpacked_files,
            max_seconds=settings.api.max_unpack_seconds,
        )
    except TreeTooLargeError as exc:
        raise TooLargeError(str(exc)) from exc


_UPLOAD_FIELD = {"packages": ("sources", "source"), "images": ("contexts", "context")}
"""Which field of SubmitIn carries the uploads of a manifest list, and what one of them is called."""


def unpack_trees(
    farm: FarmContext,
    kind: Literal["packages", "images"],
    trees: Sequence[PackageSource | ImageSource],
    uploaded: dict[str, str],
    scratch: Path,
) -> dict[int, Path]:
    """Unpack the uploaded tarball of each ``path`` tree of ``trees`` (the manifest's packages or
    images) into ``scratch/<kind>/<index>``; the engine reads those instead of the client's paths."""
    field, noun = _UPLOAD_FIELD[kind]
    prepared: dict[int, Path] = {}
    for index, tree in enumerate(trees):
        if tree.path is None:
            continue  # git: the farm fetches it itself
        where = f"{kind}[{index}] ({tree.path})"
        sha = uploaded.get(str(index))
        if sha is None:
            raise BadSourceError(f"{where}: no uploaded {noun} given in '{field}'")
        if not farm.store.has(sha):
            raise BadSourceError(f"{where}: {noun} {sha} was not uploaded")
        target = _fetch_unpacked(farm, sha, scratch / kind / str(index), f"{kind}[{index}]")
        if kind == "packages" and not (target / "debian" / "control").is_file():
            raise BadSourceError(f"{where}: the uploaded tree has no debian/control")
        prepared[index] = target
    extra = set(uploaded) - {str(i) for i in prepared}
    if extra:
        raise BadSourceError(f"'{field}' given for {kind} that are not path {kind}: {sorted(extra)}")
    return prepared


def _fetch_unpacked(farm: FarmContext, sha: str, target: Path, label: str) -> Path:
    """Fetch the uploaded tarball ``sha`` and unpack it into ``target`` within the upload bounds;
    a mistake names ``label`` (``packages[0]``)."""
    tarball = target.with_suffix(".tar.gz")
    target.parent.mkdir(parents=True, exist_ok=True)
    farm.store.fetch(sha, tarball)
    try:
        _unpack_bounded(farm, tarball, target)
    except TooLargeError as exc:
        raise TooLargeError(f"{label}: {exc}") from exc
    except PermanentError as exc:
        raise BadSourceError(f"{label}: {exc}") from exc
    tarball.unlink()
    return target


def unpack_files(
    farm: FarmContext, packages: int, uploaded: dict[str, str], scratch: Path
) -> dict[int, Path]:
    """Unpack each package's uploaded flat tarball of local files (a ``path`` tree's upstream
    tarballs, a local .dsc and its files) into ``scratch/files/<index>``; the source resolver
    (:mod:`buildfarm.engine.srcpkg`) reads them there instead of the client's disk."""
    out: dict[int, Path] = {}
    for key, sha in uploaded.items():
        index = int(key)
        if index >= packages:
            raise BadSourceError(f"'files' given for packages[{index}], which the manifest does not have")
        if not farm.store.has(sha):
            raise BadSourceError(f"packages[{index}]: files {sha} were not uploaded")
        target = _fetch_unpacked(farm, sha, scratch / "files" / str(index), f"packages[{index}]")
        if any(not p.is_file() for p in target.iterdir()):
            raise BadSourceError(f"packages[{index}]: the uploaded files must be plain files, flat")
        out[index] = target
    return out
