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
Source packages (.dsc and files) follow their binaries: the branch holds the source package of
each source package version it holds, as the build that won brought it; a version replaced or
removed takes its source package with it.  pulp_deb keeps one source package per name and
version in a repository version, like the merge.
Pure functions, no requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from buildfarm.backends.aptbranch import BinaryFile, BranchState, SourceEntry, merge, same_version
from buildfarm.backends.pulp.layout import PulpPackage, PulpSource, SourceUnit, Unit, source_label


@dataclass(frozen=True)
class Plan:
    """How one repository version becomes the merge: what to add, what to remove, the result."""

    add: list[Unit]
    remove: list[str]  # package hrefs
    merged: BranchState
    add_sources: list[SourceUnit] = field(default_factory=list)
    remove_sources: list[str] = field(default_factory=list)  # source package hrefs

    @property
    def changes(self) -> bool:
        return bool(self.add or self.remove or self.add_sources or self.remove_sources)


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
    present_sources: Iterable[PulpSource] = (),
    source_units: Iterable[SourceUnit] = (),
) -> Plan:
    """The change that makes a version holding ``present`` (and ``present_sources``) hold the
    build's packages (and ``source_units``, its source packages) merged in."""
    merged = merge(state_of(present, labels), own_state(units, build_id), prefer_incoming=prefer_incoming)
    keep = {f.filename for entry in merged.values() for f in entry.files}
    here = {p.href for p in present}
    add = [unit for unit in units if unit.package.href in keep and unit.package.href not in here]
    remove = sorted(p.href for p in present if p.href not in keep)
    # A source package version this build won has exactly the build's source package (none if
    # it brought none); any other version the branch holds keeps the one it has.
    own_sources = {
        u.package.source: u
        for u in source_units
        if _holds(merged, u.package) and merged[u.package.source].build_id == build_id
    }
    sources_here = list(present_sources)
    keep_sources = {
        s.href
        for s in sources_here
        if _holds(merged, s)
        and (merged[s.source].build_id != build_id or _same(own_sources.get(s.source), s))
    }
    held = {s.href for s in sources_here}
    add_sources = [u for u in own_sources.values() if u.package.href not in held]
    remove_sources = sorted(held - keep_sources)
    return Plan(add, remove, merged, add_sources, remove_sources)


def _holds(merged: BranchState, source: PulpSource) -> bool:
    """Whether the merge holds the version of ``source``."""
    entry = merged.get(source.source)
    return entry is not None and same_version(entry.version, source.version)


def _same(unit: SourceUnit | None, source: PulpSource) -> bool:
    return unit is not None and unit.package.href == source.href


def labels_for(merged: BranchState, build_id: int) -> dict[str, str]:
    """The source labels a branch needs after ``build_id`` merged in (its own winners only)."""
    return {
        source_label(name): f"{entry.version} {build_id}"
        for name, entry in merged.items()
        if entry.build_id == build_id
    }
