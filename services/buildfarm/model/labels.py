"""Node labels and the labels a step requires: what a node can run, and what a step needs.

A label is ``key=value`` (``arch=arm64``, ``builder=sbuild``, ``cpu=large``) or a bare tag
(``gpu``).  A node advertises a set of them (:func:`node_labels`, from ``dpkg`` and settings);
a step requires some (:func:`step_requirements`: the manifest's ``requires:``, and the
architecture of the node that must build it), kept as one canonical string (sorted,
comma-joined; "" for none) so the database can group and compare them.

What a step requires is *where* it may run, never *what* it builds: ``requires:`` labels (a big
machine, a builder kind, a tag) are not in its input key, so the same package built on a large
node or a small one is the same step, reused either way.  The architecture a step builds for
is another matter: it changes the packages, so it is in the key (``host_arch``,
:func:`buildfarm.model.planner.compute_input_keys`), as is whether they were built natively or
cross-built.  A node can run a step when it has every
label the step requires; a node with ``arch=amd64`` and ``arch=i386`` (a foreign architecture
dpkg accepts) runs steps of either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from buildfarm.model.errors import PermanentError

LABEL = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,62}(=[A-Za-z0-9][A-Za-z0-9._:/+-]{0,62})?$")
"""A label: a lowercase key (Kubernetes label keys fit), optionally ``=value``."""
NATIVE_ARCH = "native-arch"
"""The label key of a node's own architecture (``dpkg --print-architecture``)."""
INDEPENDENT_ARCHITECTURES = frozenset({"any", "all"})
"""``Architecture`` values that ask nothing of the node (a wildcard such as linux-any neither)."""


def check_label(label: str, where: str) -> str:
    if not LABEL.match(label):
        raise PermanentError(
            f"{where}: label {label!r} is not key=value or a tag (lowercase key, e.g. arch=arm64, gpu)"
        )
    return label


def format_requires(labels: Iterable[str]) -> str:
    """The canonical string a step keeps: sorted, unique, comma-joined."""
    return ",".join(sorted(set(labels)))


def parse_requires(requires: str) -> frozenset[str]:
    return frozenset(part for part in requires.split(",") if part)


def satisfies(node: frozenset[str], requires: str) -> bool:
    """Whether a node with labels ``node`` can run a step that requires ``requires``."""
    return parse_requires(requires) <= node


def missing(node: frozenset[str], requires: str) -> frozenset[str]:
    return parse_requires(requires) - node


def size_class(value: float, medium: float, large: float) -> str:
    return "small" if value < medium else "medium" if value < large else "large"


def node_labels(
    architectures: Iterable[str],
    builders: Iterable[str],
    cpus: int,
    memory_gib: float,
    custom: Iterable[str] = (),
) -> frozenset[str]:
    """What a node advertises: its dpkg architectures (the first is its own, also advertised as
    ``native-arch=``: dpkg's foreign architectures run, but are not what its compiler builds
    for), the builder kinds it runs, its CPU and memory class (small < 4 cores / 8 GiB <= medium
    < 16 cores / 32 GiB <= large) and the custom labels it was given (setting ``node_labels``;
    the chart's ``worker.nodeLabels``)."""
    architectures = [a for a in architectures if a]
    labels = {f"arch={a}" for a in architectures}
    if architectures:
        labels.add(f"{NATIVE_ARCH}={architectures[0]}")
    labels |= {f"builder={b}" for b in builders}
    labels.add(f"cpu={size_class(cpus, 4, 16)}")
    labels.add(f"memory={size_class(memory_gib, 8, 32)}")
    labels |= {check_label(c, "setting node_labels") for c in custom}
    return frozenset(labels)


def build_architecture(architecture: str, arch: str | None) -> str | None:
    """The one architecture a package is built for, if it is only built for one: the
    manifest's ``arch``, else its source's ``Architecture`` when that names one architecture
    (not any/all, nor a list or a wildcard); None: the build's ``architectures``."""
    words = architecture.split()
    if arch:
        return check_label(f"arch={arch}", "arch").removeprefix("arch=")
    if len(words) == 1 and words[0] not in INDEPENDENT_ARCHITECTURES and "-" not in words[0]:
        return words[0]
    return None


def step_requirements(requires: Iterable[str], arch: str | None = None, *, native: bool = False) -> str:
    """The labels a package step requires: the manifest's ``requires``, plus ``arch=<arch>`` when
    it must be built by a node of that architecture, and ``native-arch=<arch>`` too when that
    must be the node's own (a native build of that architecture, not one dpkg merely accepts as
    foreign; ``engine/submit.py`` decides which)."""
    labels = [check_label(r, "requires") for r in requires]
    if arch:
        labels.append(check_label(f"arch={arch}", "arch"))
        if native:
            labels.append(f"{NATIVE_ARCH}={arch}")
    return format_requires(labels)
