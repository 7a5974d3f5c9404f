"""What a Pulp repository version of a branch holds, in the terms of the local backend's merge.

A branch's repository is the union of its newest successful build of each **source** package,
with the rules of :mod:`buildfarm.backends.aptbranch` (the same :func:`~buildfarm.backends.aptbranch.merge`
runs here): a newer version of a source package, or the same version from a newer build,
replaces all of the older one's binaries (binaries the new version no longer builds included),
and a lower version never replaces a higher one, whatever order builds publish in.

Pulp's packages say which source package and version each binary comes from, but not which
build brought it: the branch repository's labels ``buildfarm_src.<source>`` =
``<version> <build id>`` say that (a label whose version is not the one held counts as build 0,
so a rebuild of the same version still wins).  A build writes its labels right after its
version, before its publication: a retry after a crash in between plans again and writes them.
The one race left: two rebuilds of the *same* version of one source package publishing at the
same moment may leave the older build's copy (the newer one's label is not yet there when the
older one plans again); the branch then still holds one whole build of that version.
Pure functions, no requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from buildfarm.backends.aptbranch import BinaryFile, BranchState, SourceEntry, merge
from buildfarm.backends.pulp.layout import PulpPackage, Unit, source_label


@dataclass(frozen=True)
class Plan:
    """How one repository version becomes the merge: what to add, what to remove, the result."""

    add: list[Unit]
    remove: list[str]  # package hrefs
    merged: BranchState

    @property
    def changes(self) -> bool:
        return bool(self.add or self.remove)


def _binary(package: PulpPackage) -> BinaryFile:
    # Pulp's own record is the href; the size plays no part in the merge.
    return BinaryFile(package.href, package.sha256, 0, package.name, package.architecture)


def _group(packages: Iterable[PulpPackage], build_of: Mapping[tuple[str, str], int]) -> BranchState:
    """Per source package, its newest version's binaries (an older one left beside it by a
    concurrent writer loses here, and so is removed by the next plan)."""
    by_source: dict[tuple[str, str], list[PulpPackage]] = {}
    for package in packages:
        by_source.setdefault((package.source, package.source_version), []).append(package)
    state: BranchState = {}
    for (source, version), members in by_source.items():
        files = tuple(sorted((_binary(p) for p in members), key=lambda f: f.filename))
        entry = SourceEntry(source, version, build_of.get((source, version), 0), files)
        if source not in state or entry.newer_than(state[source]):
            state[source] = entry
    return state


def state_of(packages: Iterable[PulpPackage], labels: Mapping[str, str]) -> BranchState:
    """The branch state a repository version holds, build ids read from the branch's labels."""
    packages = list(packages)
    build_of: dict[tuple[str, str], int] = {}
    for source in {p.source for p in packages}:
        version, _, build = (labels.get(source_label(source)) or "").partition(" ")
        if build.isdigit():
            build_of[(source, version)] = int(build)
    return _group(packages, build_of)


def own_state(units: Iterable[Unit], build_id: int) -> BranchState:
    """What one build brings (a build holding two versions of one source brings the newest)."""
    packages = [unit.package for unit in units]
    return _group(packages, {(p.source, p.source_version): build_id for p in packages})


def plan(
    present: list[PulpPackage],
    labels: Mapping[str, str],
    units: list[Unit],
    build_id: int,
    *,
    prefer_incoming: bool,
) -> Plan:
    """The change that makes a version holding ``present`` hold the build's packages merged in."""
    merged = merge(state_of(present, labels), own_state(units, build_id), prefer_incoming=prefer_incoming)
    keep = {f.filename for entry in merged.values() for f in entry.files}
    here = {p.href for p in present}
    add = [unit for unit in units if unit.package.href in keep and unit.package.href not in here]
    remove = sorted(p.href for p in present if p.href not in keep)
    return Plan(add, remove, merged)


def labels_for(merged: BranchState, build_id: int) -> dict[str, str]:
    """The source labels a branch needs after ``build_id`` merged in (its own winners only)."""
    return {
        source_label(name): f"{entry.version} {build_id}"
        for name, entry in merged.items()
        if entry.build_id == build_id
    }
