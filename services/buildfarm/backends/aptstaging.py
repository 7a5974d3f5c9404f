"""A running build's staging repository on the local profile, grown by what each release adds.

Every release of a step that has dependencies stages all the packages the build made so far, so
that the step's builder installs them.  Writing that repository whole each time (fetch and fsync
every package, index them all) costs a build quadratic time; here a stage costs what it adds:

- The packages live in the build's *pool*, which only grows while the build runs:
  ``staging/.<id>-pool/<sha256>/<filename>``.  A path names one content forever, so a new
  generation never changes a file an older generation's reader is downloading.  Only packages the
  pool lacks are fetched from the artifact store.
- A *generation* is only the indexes: ``Packages`` (and ``.gz``) is the current generation's, less
  the stanzas of packages no longer wanted, plus the stanzas ``apt-ftparchive packages`` writes
  for the new ones alone (run over a scratch tree of hardlinks); ``Release`` is apt-ftparchive's
  over those indexes; a ``pool`` symlink leads to the pool.  A stage that adds and removes
  nothing writes nothing.
- The generation appears by switching ``staging/<id>`` (one ``os.replace``), as before: apt sees
  the old ``Release`` with the old ``Packages`` or the new with the new, never a mix.

The caller holds the branch directory's lock.  The pool goes with the staging
(``drop_staging``); a crashed writer's scratch trees are removed by the next stage of the build.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from buildfarm.backends import apttree
from buildfarm.backends.base import Fetch, StoredPackage
from buildfarm.model.errors import PermanentError

POOL_LINK = "pool"
SCRATCH_PREFIX = ".new-"
_FILENAME = re.compile(r"^Filename: (\S+)$", re.MULTILINE)


def pool_dir(staging: Path, build_id: int) -> Path:
    return staging / f".{build_id}-pool"


def generation_prefix(build_id: int) -> str:
    return f".{build_id}-gen-"


def stage(staging: Path, build_id: int, packages: Sequence[StoredPackage], fetch: Fetch, label: str) -> None:
    """Make ``staging/<build_id>`` serve exactly ``packages``, fetching only what its pool lacks."""
    wanted = _by_name(packages)
    pool = pool_dir(staging, build_id)
    link = staging / str(build_id)
    current = _current_generation(link)
    index = _read_index(current) if current is not None else None
    keys = {_pool_path(p): p for p in wanted if p.filename.endswith(".deb")}  # .udeb: kept, not indexed
    for package in wanted:
        _add_to_pool(pool, package, fetch)
    if index is not None and set(index) == set(keys):
        return  # what apt sees already is exactly this
    known = index or {}
    fresh = _stanzas(pool, [p for key, p in keys.items() if key not in known])
    stanzas = [known.get(key) or fresh[key] for key in sorted(keys)]
    generation = _write_generation(staging, build_id, stanzas, label)
    apttree.switch_symlink(link, generation.name)
    for old in staging.glob(f"{generation_prefix(build_id)}*"):
        if old != generation:
            shutil.rmtree(old, ignore_errors=True)


def drop(staging: Path, build_id: int) -> None:
    """Remove the build's staging: its link, generations and pool."""
    link = staging / str(build_id)
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    for generation in staging.glob(f"{generation_prefix(build_id)}*"):
        shutil.rmtree(generation, ignore_errors=True)
    shutil.rmtree(pool_dir(staging, build_id), ignore_errors=True)


def orphans(staging: Path) -> list[Path]:
    """Generations no link points at, and pools of builds whose staging link is gone."""
    links = {p.name: os.readlink(p) for p in staging.iterdir() if p.is_symlink()}
    linked = set(links.values())
    found = [p for p in staging.glob(".*-gen-*") if p.is_dir() and p.name not in linked]
    found += [p for p in staging.glob(".*-pool") if p.is_dir() and p.name[1:].split("-")[0] not in links]
    return found


def _by_name(packages: Sequence[StoredPackage]) -> list[StoredPackage]:
    seen: dict[str, StoredPackage] = {}
    for package in packages:
        name = apttree.check_filename(package.filename)
        if not name.endswith((".deb", ".udeb")):
            raise PermanentError(f"staging holds binary packages only, not {name}")
        if name in seen:
            if seen[name].sha256 != package.sha256:
                raise PermanentError(f"two different packages are both named {name}")
            continue  # the same file listed twice is staged once
        seen[name] = package
    return list(seen.values())


def _pool_path(package: StoredPackage) -> str:
    return f"{POOL_LINK}/{package.sha256}/{package.filename}"


def _add_to_pool(pool: Path, package: StoredPackage, fetch: Fetch) -> None:
    """Fetch ``package`` into the pool unless it is there (a fetch writes whole or not at all)."""
    path = pool / package.sha256 / package.filename
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fetch(package.sha256, path)
    size = path.stat().st_size
    if size != package.size:
        path.unlink()
        raise PermanentError(
            f"{package.filename} ({package.sha256[:12]}) has {size} bytes in the store, "
            f"its record says {package.size}"
        )


def _current_generation(link: Path) -> Path | None:
    try:
        target = link.parent / os.readlink(link)
    except OSError:  # no staging yet
        return None
    return target if (target / "Release").is_file() else None


def _read_index(generation: Path) -> dict[str, str]:
    """The generation's Packages as stanzas by pool path (a generation of the older layout, whose
    packages sit beside the index, yields stanzas no pool path matches: all are indexed again)."""
    text = (generation / "Packages").read_text(encoding="utf-8")
    return _split(text)


def _split(text: str) -> dict[str, str]:
    return apttree.split_stanzas(text, _FILENAME)


def _stanzas(pool: Path, packages: list[StoredPackage]) -> dict[str, str]:
    """The Packages stanzas of ``packages`` (in the pool), from one apt-ftparchive run over them alone."""
    if not packages:
        return {}
    for leftover in pool.glob(f"{SCRATCH_PREFIX}*"):  # a crashed stage's: we hold the lock
        shutil.rmtree(leftover, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(dir=pool, prefix=SCRATCH_PREFIX))
    try:
        for package in packages:
            target = scratch / _pool_path(package)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(pool / package.sha256 / package.filename, target)
        found = _split(apttree.run_ftparchive(["packages", POOL_LINK], scratch).decode("utf-8"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    missing = sorted(p.filename for p in packages if _pool_path(p) not in found)
    if missing:
        raise PermanentError(f"apt-ftparchive could not index {', '.join(missing)}")
    return found


def _write_generation(staging: Path, build_id: int, stanzas: list[str], label: str) -> Path:
    """A complete generation (indexes, Release, the pool link) in a new hidden directory."""
    with apttree.new_tree(staging, generation_prefix(build_id)) as generation:
        packages = "\n".join(stanzas).encode("utf-8")
        apttree.write_file(generation / "Packages", packages)
        apttree.write_file(generation / "Packages.gz", gzip.compress(packages, compresslevel=1, mtime=0))
        apttree.write_release(generation, label)  # before the pool link: Release hashes indexes only
        os.symlink(f"../{pool_dir(staging, build_id).name}", generation / POOL_LINK)
    return generation
