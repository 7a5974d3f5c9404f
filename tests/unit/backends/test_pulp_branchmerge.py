"""How a Pulp branch version is planned (buildfarm.backends.pulp.branchmerge), on records alone."""

from __future__ import annotations

from buildfarm.backends.pulp import branchmerge
from buildfarm.backends.pulp.layout import PulpPackage, Unit, source_label


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
