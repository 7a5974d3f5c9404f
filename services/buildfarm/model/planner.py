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
from collections.abc import Mapping
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
    architecture: str = "any"  # the binaries' Architecture values (a .dsc's field), space-separated


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
    architectures = dict.fromkeys(
        word for p in paragraphs[1:] for word in str(p.get("Architecture", "any")).split()
    )
    return SourceInfo(
        name=str(source["Source"]).strip(),
        version=_read_version(directory, origin),
        binaries=binaries,
        build_depends=_build_depends(source, origin, "debian/control"),
        architecture=" ".join(architectures) or "any",
    )


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
        architecture=" ".join(str(fields.get("Architecture", "any")).split()) or "any",
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


def make_plan(
    packages: list[tuple[str, SourceInfo, str]],
    images: list[tuple[str, ImageInfo, str]] | None = None,
    explicit_depends: dict[str, tuple[str, ...]] | None = None,
) -> Plan:
    """Build the dependency graph from (origin, info, tree hash) triples of one manifest:
    packages, images, and ``explicit_depends`` (a package step's name -> its manifest
    ``depends``)."""
    plan = Plan()
    producer: dict[str, str] = {}
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
        plan.steps[info.name] = PlannedStep(
            name=info.name,
            version=info.version,
            origin=origin,
            tree_hash=digest,
            binaries=info.binaries,
            depends_on=(),
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
    explicit = dict(explicit_depends or {})
    for _origin, image, _digest in images or []:
        explicit[image.name] = image.depends
    for _origin, info, _digest in packages:
        deps = {producer[d] for d in info.build_depends if d in producer} - {info.name}
        plan.steps[info.name].depends_on = tuple(sorted(deps))
    for name, wanted in explicit.items():
        step = plan.steps.get(name)
        if step is None:
            raise PlanError(f"depends is given for {name!r}, which is not a step of this build")
        for dep in wanted:
            if dep not in plan.steps:
                raise PlanError(
                    f"{step.label()} ({step.origin}) depends on {dep!r}, "
                    "which is neither a source package nor an image of this build"
                )
            if dep == name:
                raise PlanError(f"{step.label()} ({step.origin}) depends on itself")
        step.depends_on = tuple(sorted({*step.depends_on, *wanted}))
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
) -> None:
    """Fill in every step's input key, dependencies first. Image steps use the image builder's
    identity and options instead of the package runner's."""
    for name in plan.order():
        step = plan.steps[name]
        material: dict[str, object] = {
            "v": 1,
            "source": step.tree_hash,
            "deps": sorted(plan.steps[d].input_key for d in step.depends_on),
            "environment": environment_id,
            "options": dict(sorted(options.items())),
        }
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
