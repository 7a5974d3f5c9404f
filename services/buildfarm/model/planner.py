"""From Debian source trees to a build plan: steps, their order and their input keys.

Each package's ``debian/control`` is read with python-debian.  A step depends on another when
one of its Build-Depends (any alternative, any of Build-Depends/-Arch/-Indep) names a binary
package that the other builds.  A cycle is an error that names the cycle.

A step's **input key** hashes everything that decides its output: the source tree hash, the
input keys of the steps it depends on (so a change ripples to every dependent, and only to
them), the build environment's identity (base tarball or image digest) and the build options.
A step whose key already has a successful output anywhere in the farm is reused, not rebuilt.
Its **own key** hashes the same material without the dependencies: at release, the engine
combines it with what the dependencies actually built (their output identities) into a key that
stays the same when a dependency was rebuilt into identical packages (``engine/outputs.py``).

**Image steps** (``images:`` in the manifest) are steps too.  They have no Build-Depends; their
edges are the manifest's explicit ``depends`` (which packages may have as well, to wait for an
image).  An image step's key hashes its context tree (the Dockerfile is part of it), the
Dockerfile's path, the build args, the builder kind, the keys of its dependencies and the
image builder's identity (``image_environment_id``), so editing the Dockerfile, rebuilding a
package it installs or upgrading the builder all rebuild the image, and nothing else does.
"""

from __future__ import annotations

import graphlib
import hashlib
import json
import logging
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from debian.changelog import Changelog, ChangelogParseError
from debian.deb822 import Deb822, PkgRelation

from buildfarm.model.errors import PlanError
from buildfarm.model.types import DEFAULT_IMAGE_BUILDER, ImageBuilder, StepKind

_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.\-]+")
BUILD_DEPENDS_FIELDS = ("Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep")


@dataclass(frozen=True)
class SourceInfo:
    """What the planner needs from one source package's debian/ directory."""

    name: str
    version: str
    binaries: tuple[str, ...]
    build_depends: tuple[str, ...]  # every package name mentioned, alternatives included
    architectures: tuple[str, ...] = ("any",)  # the binaries' Architecture fields, e.g. ("all", "any")


@dataclass(frozen=True)
class ImageInfo:
    """What the planner needs from one image step of the manifest."""

    name: str
    dockerfile: str = "Dockerfile"
    builder: ImageBuilder = DEFAULT_IMAGE_BUILDER
    build_args: tuple[tuple[str, str], ...] = ()
    depends: tuple[str, ...] = ()  # explicit: package (source) names or image names


@dataclass
class PlannedStep:
    name: str  # the source package name, or the image name: unique within a build
    version: str
    origin: str  # how the manifest named it (path or git URL@ref), for messages
    tree_hash: str
    binaries: tuple[str, ...]
    depends_on: tuple[str, ...]  # names of steps in the same build
    priority: int = 0  # length of the longest chain of dependents: release those first
    input_key: str = ""
    own_key: str = ""  # the input key's material without the dependencies (output identities)
    kind: StepKind = StepKind.PACKAGE
    image: ImageInfo | None = None  # set for image steps
    host_arch: str = ""  # the Debian architecture its packages are built for ("": image steps)
    arch_all: bool = True  # it also builds the Architecture: all binaries (the primary step)
    source: str = ""  # the source package name (a step name is <source> or <source>:<arch>)

    def label(self) -> str:
        """How messages name the step: image steps say so, packages are their source name."""
        return f"image {self.name}" if self.kind == StepKind.IMAGE else self.name


@dataclass
class Plan:
    steps: dict[str, PlannedStep] = field(default_factory=dict)

    def order(self) -> list[str]:
        """A topological order, ties broken by priority (critical path first), then name."""
        sorter = graphlib.TopologicalSorter({n: s.depends_on for n, s in self.steps.items()})
        sorter.prepare()
        out: list[str] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=lambda n: (-self.steps[n].priority, n))
            out.extend(ready)
            sorter.done(*ready)
        return out


class _quiet_debian:
    """python-debian logs a warning and returns garbage as a name; we raise our own error instead."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("debian.deb822")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)


def read_source_info(directory: Path, origin: str) -> SourceInfo:
    """Parse ``debian/control`` and ``debian/changelog``; every failure names the package."""
    control = directory / "debian" / "control"
    try:
        with control.open(encoding="utf-8") as handle:
            paragraphs = list(Deb822.iter_paragraphs(handle))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PlanError(f"{origin}: cannot read debian/control: {exc}") from exc
    if not paragraphs or "Source" not in paragraphs[0]:
        raise PlanError(f"{origin}: debian/control has no 'Source' paragraph first")
    source = paragraphs[0]
    binaries = tuple(p["Package"] for p in paragraphs[1:] if "Package" in p)
    if not binaries or len(binaries) != len(paragraphs) - 1:
        raise PlanError(f"{origin}: debian/control: every paragraph after the first needs 'Package'")
    # Debian policy 5.6.1/5.6.7: refused at submit, not by dpkg-source minutes later on a builder
    for field_name, value in (("Source", source["Source"]), *(("Package", name) for name in binaries)):
        if not _PACKAGE_NAME.fullmatch(str(value).strip()):
            raise PlanError(
                f"{origin}: debian/control: {field_name} {str(value).strip()!r} is not a Debian package "
                "name (lowercase letters, digits, '+', '-' and '.', at least 2, starting with a letter "
                "or digit)"
            )
    return SourceInfo(
        name=str(source["Source"]).strip(),
        version=_read_version(directory, origin),
        binaries=binaries,
        build_depends=_build_depends(source, origin, "debian/control"),
        architectures=_architecture_tokens(p.get("Architecture", "any") for p in paragraphs[1:]),
    )


def _architecture_tokens(fields: Iterable[str]) -> tuple[str, ...]:
    """The distinct architecture names and wildcards of ``Architecture`` fields (sorted)."""
    return tuple(sorted({token for text in fields for token in str(text).split()})) or ("any",)


def builds_for(architectures: Iterable[str], arch: str) -> bool:
    """Whether binaries with these ``Architecture`` tokens are built for the Debian ``arch``:
    ``any``, the name itself, or a wildcard ``<os>-any`` / ``any-<cpu>`` that matches it
    (Debian linux architectures are named by their CPU: ``linux-any`` matches ``arm64``)."""
    os_name, _, cpu = arch.rpartition("-")
    os_name = os_name or "linux"
    for token in architectures:
        if token in ("any", arch) or token in (f"{os_name}-any", f"any-{cpu}", f"{os_name}-{cpu}"):
            return True
    return False


def _build_depends(fields: Mapping[str, str], origin: str, where: str) -> tuple[str, ...]:
    """Every package name in Build-Depends/-Arch/-Indep, alternatives included."""
    depends: list[str] = []
    for field_name in BUILD_DEPENDS_FIELDS:
        text = fields.get(field_name)
        if not text:
            continue
        # Debian's control files often end a list with a comma (or leave an empty line in it):
        # dpkg ignores the empty entries, and so does the planner.
        text = ",".join(part for part in text.split(",") if part.strip())
        try:
            with _quiet_debian():
                relations = PkgRelation.parse_relations(text)
        except Exception as exc:  # python-debian raises bare errors on garbage
            raise PlanError(f"{origin}: {where}: cannot parse {field_name}: {exc}") from exc
        for alternatives in relations:
            for alt in alternatives:
                name = str(alt.get("name") or "")
                if not _PACKAGE_NAME.fullmatch(name):
                    raise PlanError(f"{origin}: {where}: cannot parse {field_name}: {name!r}")
                depends.append(name)
    return tuple(depends)


def source_info_from_dsc(fields: Mapping[str, str], origin: str) -> SourceInfo:
    """What the planner needs, from a .dsc's fields (Source, Version, Binary, Build-Depends*):
    the same for a source package made from a tree and for one fetched as it is."""
    listed = str(fields.get("Binary", "")).replace("\n", " ").split(",")
    binaries = tuple(b.strip() for b in listed if b.strip())
    if not binaries:
        raise PlanError(f"{origin}: the .dsc has no Binary field")
    return SourceInfo(
        name=str(fields["Source"]).strip(),
        version=str(fields["Version"]).strip(),
        binaries=binaries,
        build_depends=_build_depends(fields, origin, ".dsc"),
        architectures=_architecture_tokens([str(fields.get("Architecture", "any"))]),
    )


def _read_version(directory: Path, origin: str) -> str:
    changelog = directory / "debian" / "changelog"
    try:
        with changelog.open(encoding="utf-8") as handle:
            parsed = Changelog(handle, max_blocks=1, strict=True)
        return str(parsed.version)
    except FileNotFoundError as exc:
        raise PlanError(f"{origin}: debian/changelog is missing") from exc
    except (ChangelogParseError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise PlanError(f"{origin}: cannot read debian/changelog: {exc}") from exc


def step_name(source: str, host_arch: str, primary: bool) -> str:
    """A package step's name: the source package's for its primary step, ``<source>:<arch>``
    for its other architectures (``:`` is in no package or image name: names stay unique)."""
    return source if primary else f"{source}:{host_arch}"


def _step_arches(
    info: SourceInfo, arches: Sequence[str], native: str, only: str | None = None
) -> list[tuple[str, bool]]:
    """(host architecture, primary) of each step of one source package; the primary first.
    ``only``: the package is built for that one architecture (manifest ``arch:``, or an
    ``Architecture`` naming one), whatever the build lists."""
    if only:
        return [(only, True)]
    wanted = [a for a in arches if builds_for(info.architectures, a)]
    primary_arch = native if native in arches else arches[0]
    if wanted and primary_arch not in wanted:
        primary_arch = wanted[0]
    return [(primary_arch, True), *((a, False) for a in wanted if a != primary_arch)]


def make_plan(
    packages: list[tuple[str, SourceInfo, str]],
    images: list[tuple[str, ImageInfo, str]] | None = None,
    explicit_depends: dict[str, tuple[str, ...]] | None = None,
    *,
    architectures: Sequence[str] | None = None,
    native: str = "",
    only_arch: Mapping[str, str] | None = None,
) -> Plan:
    """Build the dependency graph from (origin, info, tree hash) triples of one manifest:
    packages, images, and ``explicit_depends`` (a package's source name -> its manifest
    ``depends``).  ``architectures`` are the manifest's (None: ``native``, the build node's);
    ``only_arch`` names the packages built for one architecture only (source name -> it)."""
    arches = list(architectures or [native])
    plan = Plan()
    producer: dict[str, str] = {}
    by_arch: dict[tuple[str, str], str] = {}  # (source, host arch) -> step name
    for origin, info, digest in packages:
        if info.name in plan.steps:
            other = plan.steps[info.name].origin
            raise PlanError(f"source package {info.name!r} appears twice: {other} and {origin}")
        for binary in info.binaries:
            if binary in producer:
                raise PlanError(
                    f"binary package {binary!r} is built by both {producer[binary]} and {info.name}"
                )
            producer[binary] = info.name
        for host_arch, primary in _step_arches(info, arches, native, (only_arch or {}).get(info.name)):
            name = step_name(info.name, host_arch, primary)
            by_arch[(info.name, host_arch)] = name
            plan.steps[name] = PlannedStep(
                name=name,
                version=info.version,
                origin=origin,
                tree_hash=digest,
                binaries=info.binaries,
                depends_on=(),
                host_arch=host_arch,
                arch_all=primary,
                source=info.name,
            )
    for origin, image, digest in images or []:
        if image.name in plan.steps:
            raise PlanError(
                f"image {image.name!r} ({origin}) has the name of a source package of this build: "
                "rename the image"
            )
        plan.steps[image.name] = PlannedStep(
            name=image.name,
            version="",
            origin=origin,
            tree_hash=digest,
            binaries=(),
            depends_on=(),
            kind=StepKind.IMAGE,
            image=image,
        )

    def for_arch(dep: str, host_arch: str) -> str:
        """The step of ``dep`` (a source or image name) a step of ``host_arch`` waits for."""
        return by_arch.get((dep, host_arch), dep)

    explicit = dict(explicit_depends or {})
    for _origin, image, _digest in images or []:
        explicit[image.name] = image.depends
    infos = {info.name: info for _origin, info, _digest in packages}
    for step in plan.steps.values():
        if step.kind == StepKind.IMAGE:
            continue
        info = infos[step.source]
        deps = {producer[d] for d in info.build_depends if d in producer} - {info.name}
        step.depends_on = tuple(sorted(for_arch(d, step.host_arch) for d in deps))
    for name, wanted in explicit.items():
        if name not in plan.steps:
            raise PlanError(f"depends is given for {name!r}, which is not a step of this build")
        targets = [s for s in plan.steps.values() if s.source == name] or [plan.steps[name]]
        for step in targets:
            for dep in wanted:
                if dep not in plan.steps:
                    raise PlanError(
                        f"{step.label()} ({step.origin}) depends on {dep!r}, "
                        "which is neither a source package nor an image of this build"
                    )
                if dep == name:
                    raise PlanError(f"{step.label()} ({step.origin}) depends on itself")
            mapped = {for_arch(dep, step.host_arch) for dep in wanted}
            step.depends_on = tuple(sorted({*step.depends_on, *mapped}))
    _check_acyclic(plan)
    _set_priorities(plan)
    return plan


def _check_acyclic(plan: Plan) -> None:
    sorter = graphlib.TopologicalSorter({n: s.depends_on for n, s in plan.steps.items()})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle: list[str] = list(exc.args[1])
        names = " -> ".join(plan.steps[n].label() for n in reversed(cycle))
        images = any(plan.steps[n].kind == StepKind.IMAGE for n in cycle)
        what = "Build-Depends and depends" if images else "Build-Depends"
        raise PlanError(f"{what} form a cycle: {names}") from exc


def _set_priorities(plan: Plan) -> None:
    dependents: dict[str, list[str]] = {name: [] for name in plan.steps}
    for name, step in plan.steps.items():
        for dep in step.depends_on:
            dependents[dep].append(name)
    for name in reversed(plan.order()):
        plan.steps[name].priority = max((plan.steps[d].priority + 1 for d in dependents[name]), default=0)


def compute_input_keys(
    plan: Plan,
    environment_id: str,
    options: dict[str, str],
    image_environment_id: str = "",
    image_options: dict[str, str] | None = None,
    *,
    native: str = "",
    cross_environments: Mapping[str, str] | None = None,
    built_natively: Collection[str] = (),
    placed: Mapping[str, str | None] | None = None,
    names: Sequence[str] | None = None,
) -> None:
    """Fill in every step's input key, dependencies first (only the steps ``names`` when given,
    in their order: each one's dependencies have theirs already, or are named before it).
    Image steps use the image builder's identity and options instead of the package runner's.
    A step whose build differs from the node's own (another architecture, or without the
    ``all`` binaries) has its architecture in its key: the architecture a package is built for
    changes what it builds.

    A package step for another architecture than ``native`` is cross-built, with
    ``cross_environments[host_arch]`` (the cross environment's identity) as its environment;
    unless its architecture is in ``built_natively`` (a node of that architecture builds it):
    then its key says so (``"on": "native"``: a native build is not a cross build's twin) and
    names the farm's environment, the same recipe and mirror state the node's own environment
    is made from for its architecture (the node's digest is not known at submit).

    ``placed`` (step name: its cross environment's identity, or None for a native build)
    overrides both for the steps it names: the placement of single steps, as the reaper changes
    it when a native node of their architecture went away (``engine/crossfallback.py``).

    The labels a step requires (``requires:``: where it may run) are not in its key."""
    for name in plan.order() if names is None else names:
        step = plan.steps[name]
        material: dict[str, object] = {
            "v": 1,
            "source": step.tree_hash,
            "deps": sorted(plan.steps[d].input_key for d in step.depends_on),
            "environment": environment_id,
            "options": dict(sorted(options.items())),
        }
        if step.image is None and step.host_arch and (step.host_arch != native or not step.arch_all):
            material["arch"] = {"host": step.host_arch, "all": step.arch_all}
            if step.host_arch != native:
                if placed is not None and step.name in placed:
                    cross = placed[step.name]
                elif step.host_arch in built_natively:
                    cross = None
                else:
                    cross = (cross_environments or {})[step.host_arch]
                if cross is None:
                    material["arch"] = {"host": step.host_arch, "all": step.arch_all, "on": "native"}
                else:
                    material["environment"] = cross
        if step.image is not None:
            material |= {
                "kind": StepKind.IMAGE.value,
                "environment": image_environment_id,
                "options": dict(sorted((image_options or {}).items())),
                "dockerfile": step.image.dockerfile,
                "builder": str(step.image.builder),
                "build_args": sorted(step.image.build_args),
            }
        step.input_key = _digest(material)
        step.own_key = _digest({**material, "deps": None, "v": "own-1"})


def _digest(material: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
