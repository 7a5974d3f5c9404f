"""The files inside each source bundle, remembered by the bundle's sha256.

A package step's source bundle (a tarball in the artifact store) holds its Debian source package:
the .dsc and the files it names.  Publishing needs their names and hashes to ask the repository
which it holds already (:class:`~buildfarm.backends.base.HoldsPackages`); reading them means
fetching and unpacking the bundle.  A bundle is content-addressed, so its listing never changes:
it is remembered in a small file under the work directory the first time a bundle is unpacked,
and a no-change re-run of thousands of packages fetches no bundle at all.  The cache is only a
shortcut: a missing or unreadable entry costs one fetch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from buildfarm.backends.base import StoredPackage

CACHE_DIR = "bundle-files"


def _entry(work_root: Path, sha256: str) -> Path:
    return work_root / CACHE_DIR / sha256


def listing(work_root: Path, sha256: str) -> list[StoredPackage] | None:
    """The files of bundle ``sha256`` as remembered (``[]``: a bare tree), or None on a miss."""
    try:
        raw = json.loads(_entry(work_root, sha256).read_text())
        return [StoredPackage(str(f["filename"]), str(f["sha256"]), int(f["size"])) for f in raw]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def remember(work_root: Path, sha256: str, files: list[StoredPackage]) -> None:
    """Remember the files of bundle ``sha256`` (one atomic file)."""
    root = work_root / CACHE_DIR
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        json.dump([{"filename": f.filename, "sha256": f.sha256, "size": f.size} for f in files], handle)
    os.replace(tmp, _entry(work_root, sha256))
