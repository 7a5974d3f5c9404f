"""The files inside each source bundle, remembered by the bundle's sha256.

A package step's source bundle (a tarball in the artifact store) holds its Debian source package:
the .dsc and the files it names.  Publishing needs their names and hashes to ask the repository
which it holds already (:class:`~buildfarm.backends.base.HoldsPackages`); reading them means
fetching and unpacking the bundle.  A bundle is content-addressed, so its listing never changes:
it is remembered under the work directory the first time a bundle is unpacked, and a no-change
re-run of thousands of packages fetches no bundle at all.

Each listing is kept twice: in a small file of its own and in one combined index
(``index.json``), which a publication reads once for all of its bundles (:func:`listings`):
reading thousands of small files took a fifth of a re-run's publication.  The index is rewritten
whole (one atomic file), so a concurrent writer may win and drop the other's new entries: those
are then read from their small files, and added to the index again.  The cache is only a
shortcut: a missing or unreadable entry costs one fetch.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from buildfarm.backends.base import StoredPackage

CACHE_DIR = "bundle-files"
INDEX_FILE = "index.json"
_INDEX_VERSION = 1
MAX_INDEXED = 200_000
"""Bundles the combined index holds at most; beyond it, only those of the last publication."""


def _entry(work_root: Path, sha256: str) -> Path:
    return work_root / CACHE_DIR / sha256


def _files(raw: object) -> list[StoredPackage]:
    if not isinstance(raw, list):
        raise TypeError("not a list")
    return [StoredPackage(str(f["filename"]), str(f["sha256"]), int(f["size"])) for f in raw]


def listing(work_root: Path, sha256: str) -> list[StoredPackage] | None:
    """The files of bundle ``sha256`` as remembered (``[]``: a bare tree), or None on a miss."""
    try:
        return _files(json.loads(_entry(work_root, sha256).read_bytes()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def listings(work_root: Path, sha256s: Iterable[str]) -> dict[str, list[StoredPackage] | None]:
    """:func:`listing` of each of ``sha256s``, the combined index read once; those it lacked and
    found in their small files are added to it."""
    index = _read_index(work_root)
    found: dict[str, list[StoredPackage] | None] = {}
    learned: dict[str, list[StoredPackage]] = {}
    for sha256 in set(sha256s):
        try:
            found[sha256] = _files(index[sha256])
            continue
        except (KeyError, TypeError, ValueError):
            pass
        found[sha256] = files = listing(work_root, sha256)
        if files is not None:
            learned[sha256] = files
    if learned:
        _index_more(work_root, index, learned, keep=found.keys())
    return found


def _index_more(
    work_root: Path,
    index: dict[str, object],
    more: Mapping[str, list[StoredPackage]],
    keep: Collection[str] = (),
) -> None:
    """Write the combined index: ``index`` (as read) with ``more``; past :data:`MAX_INDEXED`,
    only ``more`` and ``keep`` (the bundles of the publication at hand)."""
    if len(index) + len(more) > MAX_INDEXED:
        index = {sha256: index[sha256] for sha256 in keep if sha256 in index}
    index.update({sha256: _records(files) for sha256, files in more.items()})
    root = work_root / CACHE_DIR
    root.mkdir(parents=True, exist_ok=True)
    # dumps, not dump: json's C encoder (dump to a file is the pure Python one).
    data = json.dumps({"v": _INDEX_VERSION, "bundles": index}, separators=(",", ":"))
    _write_atomic(root, INDEX_FILE, data)


def _records(files: list[StoredPackage]) -> list[dict[str, object]]:
    return [{"filename": f.filename, "sha256": f.sha256, "size": f.size} for f in files]


def _read_index(work_root: Path) -> dict[str, object]:
    try:
        body = json.loads((work_root / CACHE_DIR / INDEX_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(body, dict) or body.get("v") != _INDEX_VERSION:
        return {}
    bundles = body.get("bundles")
    return dict(bundles) if isinstance(bundles, dict) else {}


def _write_atomic(root: Path, name: str, data: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        handle.write(data)
    os.replace(tmp, root / name)


def remember(work_root: Path, found: Mapping[str, list[StoredPackage]]) -> None:
    """Remember the files of each bundle of ``found`` (by sha256): one small file each, and all
    of them in the combined index."""
    root = work_root / CACHE_DIR
    root.mkdir(parents=True, exist_ok=True)
    for sha256, files in found.items():
        _write_atomic(root, sha256, json.dumps(_records(files)))
    _index_more(work_root, _read_index(work_root), found, keep=found.keys())
