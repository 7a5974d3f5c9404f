"""A step's source as a runner gets it: the Debian source package (a .dsc and its files).

The farm hands every package step one deterministic ``.tar.gz`` holding the .dsc and every file
it names, flat (:func:`buildfarm.model.debsource.pack_source_package`); the runner builds that
.dsc (sbuild takes it as it is; ``dpkg-source -x`` unpacks it for dpkg-buildpackage).  A tarball
of a bare tree (steps recorded before source packages) is still accepted.
"""

from __future__ import annotations

from pathlib import Path

from buildfarm.model.errors import PermanentError
from buildfarm.model.sources import unpack_tree


def unpack_step_source(tarball: Path, dest: Path) -> Path | None:
    """Unpack the step's source into ``dest``; the .dsc to build, or None for a bare tree."""
    unpack_tree(tarball, dest)
    if (dest / "debian" / "control").is_file():
        return None
    dscs = sorted(dest.glob("*.dsc"))
    if len(dscs) != 1:
        raise PermanentError(f"the step's source holds {len(dscs)} .dsc files, expected exactly 1")
    return dscs[0]
