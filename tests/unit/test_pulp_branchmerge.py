"""How a Pulp branch version is planned (buildfarm.backends.pulp.branchmerge), on records alone."""

from __future__ import annotations

from buildfarm.backends.pulp import branchmerge
from buildfarm.backends.pulp.layout import PulpPackage, PulpSource, SourceUnit, Unit, source_label


def package(name: str, version: str, build: int, source: str = "") -> PulpPackage:
    href = f"/pulp/api/v3/content/deb/packages/{name}-{version}-{build}/"
    return PulpPackage(href, name, "all", version, f"sha-{name}-{version}-{build}", source or name, version)


def unit(pkg: PulpPackage) -> Unit:
    return Unit(pkg, "/component/", None, f"/link/{pkg.href}")


def test_source_field_with_a_version_names_the_source_and_its_version() -> None:
    entity = {"pulp_href": "/p/", "package": "lib1", "source": "lib (2.0-1)", "architecture": "amd64"}
    read = PulpPackage.from_entity({**entity, "version": "2.0-1+b1", "sha256": "x"})
    assert (read.source, read.source_version) == ("lib", "2.0-1")
    plain = PulpPackage.from_entity({**entity, "source": None, "version": "3", "sha256": "x"})
    assert (plain.source, plain.source_version) == ("lib1", "3")


def test_a_new_version_removes_every_binary_of_the_old_one() -> None:
    old = [package("alpha", "1.0", 1), package("alpha-extra", "1.0", 1, "alpha"), package("beta", "1.0", 1)]
    new = package("alpha", "2.0", 2)
    plan = branchmerge.plan(old, {}, [unit(new)], 2, prefer_incoming=False)
    assert plan.add == [unit(new)]
    assert plan.remove == sorted([old[0].href, old[1].href])
    assert branchmerge.labels_for(plan.merged, 2) == {source_label("alpha"): "2.0 2"}


def test_an_older_rebuild_of_the_same_version_loses_by_the_label() -> None:
    held = package("tool", "2.0", 9)
    late = package("tool", "2.0", 4)
    labels = {source_label("tool"): "2.0 9"}
    assert not branchmerge.plan([held], labels, [unit(late)], 4, prefer_incoming=False).changes
    # Without the label (or with one for another version) the held copy counts as build 0.
    stale = {source_label("tool"): "1.0 9"}
    assert branchmerge.plan([held], stale, [unit(late)], 4, prefer_incoming=False).changes
    # A personal build's packages win whatever their versions.
    older = package("tool", "1.0", 3)
    assert branchmerge.plan([held], labels, [unit(older)], 3, prefer_incoming=True).remove == [held.href]


def test_label_keys_take_plus_signs() -> None:
    assert source_label("libstdc++") == "buildfarm_src.libstdc__"


def source_unit(source: str, version: str, build: int) -> SourceUnit:
    held = PulpSource(f"/content/deb/source_packages/{source}-{version}-{build}/", source, version)
    return SourceUnit(held, "/component/", f"/source-link/{held.href}")


def test_source_packages_follow_their_binaries() -> None:
    alpha1, beta = source_unit("alpha", "1.0", 1), source_unit("beta", "1.0", 1)
    present = [package("alpha", "1.0", 1), package("beta", "1.0", 1)]
    labels = {source_label("alpha"): "1.0 1", source_label("beta"): "1.0 1"}
    alpha2 = source_unit("alpha", "2.0", 2)
    plan = branchmerge.plan(
        present,
        labels,
        [unit(package("alpha", "2.0", 2))],
        2,
        prefer_incoming=False,
        present_sources=[alpha1.package, beta.package],
        source_units=[alpha2],
    )
    # beta's source package is carried; alpha 1.0's goes with its binaries, 2.0's comes in.
    assert plan.add_sources == [alpha2] and plan.remove_sources == [alpha1.package.href]
    # A build that loses (an older version) brings its source package nowhere.
    late = branchmerge.plan(
        present,
        labels,
        [unit(package("beta", "0.9", 3))],
        3,
        prefer_incoming=False,
        present_sources=[alpha1.package, beta.package],
        source_units=[source_unit("beta", "0.9", 3)],
    )
    assert not late.changes
    # A rebuild of the same version without a source package of its own drops the old one:
    # the branch never serves a source package that is not the one its binaries were built from.
    rebuilt = branchmerge.plan(
        present,
        labels,
        [unit(package("beta", "1.0", 4))],
        4,
        prefer_incoming=False,
        present_sources=[alpha1.package, beta.package],
    )
    assert rebuilt.remove_sources == [beta.package.href] and not rebuilt.add_sources
