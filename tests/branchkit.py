"""Branch repositories under random build histories: the packages, the histories and the model.

``test_aptrepo_branch`` (the local backend) and ``test_pulp_branch`` hold their backends to one
property with these: after any sequence of builds, ``latest`` holds exactly the newest successful
version of every source package the branch has built (:func:`newest`), with that version's
binaries only.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from debian.debian_support import Version
from hypothesis import strategies as st

from buildfarm.backends.base import PackageFile

BINARIES: dict[tuple[str, str], tuple[str, ...]] = {
    # source, version -> its binaries; alpha 2.0 no longer builds alpha-extra
    ("alpha", "1.0"): ("alpha", "alpha-extra"),
    ("alpha", "2.0"): ("alpha",),
    ("beta", "1.0"): ("beta",),
    ("beta", "1.10"): ("beta",),  # 1.10 > 1.9 > 1.0 in Debian's order, not as text
    ("beta", "1.9"): ("beta",),
    ("gamma", "1:0.5"): ("gamma", "gamma-doc"),  # the epoch makes it newer than 3.0
    ("gamma", "3.0"): ("gamma", "gamma-doc"),
}
FLAVOURS = (0, 1)
"""Two builds of one source version give different bytes under the same file names (a rebuild)."""

Variant = tuple[str, str, int]  # source, version, flavour
Pool = dict[Variant, list[PackageFile]]


def _deb(workdir: Path, package: str, source: str, version: str, flavour: int) -> PackageFile:
    tree = workdir / f"{package}-{version}-{flavour}".replace(":", "_")
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nSource: {source}\nVersion: {version}\nArchitecture: all\n"
        f"Maintainer: Farm Tests <tests@example.org>\nDescription: test package {package}\n"
    )
    (tree / "usr" / "share" / package).mkdir(parents=True)
    (tree / "usr" / "share" / package / "payload").write_text(f"{package} {version} flavour {flavour}\n")
    filename = f"{package}_{version.rsplit(':', maxsplit=1)[-1]}_all.deb"
    out = workdir / f"{flavour}" / filename
    out.parent.mkdir(exist_ok=True)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)], check=True, capture_output=True
    )
    data = out.read_bytes()
    return PackageFile(filename, hashlib.sha256(data).hexdigest(), len(data), out)


def make_pool(workdir: Path) -> Pool:
    """Every variant's binaries as real .deb files (~25 debs, ~0.5 s): build it once per module."""
    return {
        (source, version, flavour): [_deb(workdir, b, source, version, flavour) for b in binaries]
        for (source, version), binaries in BINARIES.items()
        for flavour in FLAVOURS
    }


@dataclass(frozen=True)
class Build:
    kind: str  # nightly | personal
    outcome: str  # ok | failed (never published) | broken (publish refuses a package)
    variants: tuple[Variant, ...]


def histories(
    *,
    kinds: Sequence[str],
    outcomes: Sequence[str],
    variants: int,
    builds: int,
    publishes: int,
    least: int = 1,
) -> st.SearchStrategy[tuple[list[Build], list[int]]]:
    """Builds (ids 1..n, in submission order, ``least`` to ``builds`` of them, each of up to
    ``variants`` source packages) and the order they publish in (``least`` to ``publishes``
    publishes): any order, with repeats (a repeat is a retry of the same build).  ``kinds`` and
    ``outcomes`` are drawn from evenly: repeat a value to make it likelier."""
    build = st.builds(
        Build,
        kind=st.sampled_from(list(kinds)),
        outcome=st.sampled_from(list(outcomes)),
        variants=st.lists(
            st.sampled_from([(s, v, f) for (s, v) in BINARIES for f in FLAVOURS]),
            min_size=1,
            max_size=variants,
            unique_by=lambda v: v[0],
        ).map(tuple),
    )

    @st.composite
    def drawn(draw: st.DrawFn) -> tuple[list[Build], list[int]]:
        listed = draw(st.lists(build, min_size=least, max_size=builds))
        order = draw(st.lists(st.integers(0, len(listed) - 1), min_size=least, max_size=publishes))
        return listed, order

    return drawn()


def newest(published: dict[int, tuple[Variant, ...]]) -> dict[str, Variant]:
    """The model: per source, the variant of the newest (version, build id) published."""
    best: dict[str, tuple[Version, int, Variant]] = {}
    for build_id, variants in published.items():
        for variant in variants:
            key = (Version(variant[1]), build_id, variant)
            if variant[0] not in best or key[:2] > best[variant[0]][:2]:
                best[variant[0]] = key
    return {source: key[2] for source, key in best.items()}
