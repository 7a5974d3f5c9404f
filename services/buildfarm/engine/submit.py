"""Turn a manifest into a build: pack sources, plan, compute input keys, record, release."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TypeVar

from sqlalchemy import insert

from buildfarm.backends.base import LocalObjects
from buildfarm.engine import gcpause, routing
from buildfarm.engine.context import FarmContext
from buildfarm.engine.dpkgsource import PACK_THREADS
from buildfarm.engine.fetch import check_source_urls, context_directories, source_directories
from buildfarm.engine.images import image_spec_record
from buildfarm.engine.packing import RecordedBuild, pack_and_release, packing_lease
from buildfarm.engine.srccache import StoredSource
from buildfarm.engine.srcpkg import SourceResolver, TreeToPack
from buildfarm.environments import host_architecture
from buildfarm.model import names
from buildfarm.model.errors import PlanError
from buildfarm.model.images import registry_host
from buildfarm.model.labels import NATIVE_ARCH, build_architecture, step_requirements
from buildfarm.model.manifest import Manifest, PackageSource
from buildfarm.model.planner import (
    ImageInfo,
    Plan,
    PlannedStep,
    SourceInfo,
    compute_input_keys,
    make_plan,
)
from buildfarm.model.sources import pack_tree, tree_hash
from buildfarm.model.types import BuildKind, StepKind, StepState
from buildfarm.runners.base import CrossBuilds, EnvironmentNotReady
from buildfarm.state.models import Build, Step, utcnow

_T = TypeVar("_T")
log = logging.getLogger(__name__)

BUILD_OPTIONS_VERSION = "2"
"""Bump to invalidate every input key when the way steps are built changes (2: a package step
builds its Debian source package, not a tree)."""


def build_options(ctx: FarmContext) -> dict[str, str]:
    return {
        "runner": ctx.runner.name,
        "distribution": ctx.settings.buildenv.distribution,
        "v": BUILD_OPTIONS_VERSION,
    }


def image_options(ctx: FarmContext) -> dict[str, str]:
    """A reused image is a reference in the farm's registry: another registry never reuses it."""
    return {
        "runner": ctx.image_runner.name,
        "registry": registry_host(ctx.settings.registry.url),
        "v": BUILD_OPTIONS_VERSION,
    }


def _in_parallel(work: Callable[[int], _T], count: int) -> list[_T]:
    """``work(0) .. work(count - 1)`` in threads, results in order; the first error (by index) is
    raised once the ones already started end, and those not started yet never start."""
    if count <= 1:
        return [work(index) for index in range(count)]
    with ThreadPoolExecutor(max_workers=PACK_THREADS, thread_name_prefix="pack") as pool:
        futures = [pool.submit(work, index) for index in range(count)]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _examine(
    ctx: FarmContext, resolver: SourceResolver, sources: list[tuple[PackageSource, Path | None]]
) -> list[StoredSource | TreeToPack]:
    """Every package examined (:meth:`SourceResolver.examine`), in order; the first error by
    index is raised, and no package after it is examined.

    A tree whose stat signature the source cache remembers costs a few ``stat`` calls, and one
    more for its source package in an artifact store on this machine: such trees are examined
    here, one after another.  In threads, those short system calls pass the GIL back and forth:
    a no-change re-run of 5000 trees spent twice as long on them in two threads as in one.  The
    rest, which read and hash files, ask a remote store or fetch the upstream files that
    ``orig`` names, are examined in threads (given the remembered facts of a tree, when there
    are)."""
    local = isinstance(ctx.store, LocalObjects)
    found: list[StoredSource | TreeToPack | None] = []
    facts: dict[int, tuple[str, SourceInfo, str]] = {}
    failure: Exception | None = None
    for index, (package, tree) in enumerate(sources):
        known = resolver.known_facts(package, tree)
        if known is not None and local and not package.orig:  # 'orig' may name a URL
            try:
                found.append(resolver.examine(index, package, tree, known))
            except Exception as exc:  # raised once the packages before it are examined
                failure = exc
                break
            continue
        found.append(None)
        if known is not None:
            facts[index] = known
    rest = [index for index, item in enumerate(found) if item is None]
    done = _in_parallel(
        lambda at: resolver.examine(rest[at], *sources[rest[at]], facts.get(rest[at])), len(rest)
    )
    if failure is not None:
        raise failure
    for index, item in zip(rest, done, strict=True):
        found[index] = item
    return [item for item in found if item is not None]


def native_architecture(ctx: FarmContext) -> str:
    """The architecture the farm's package runner builds for without cross-building."""
    runner = ctx.runner
    return runner.native_architecture() if isinstance(runner, CrossBuilds) else host_architecture()


def cross_environments(ctx: FarmContext, host_arches: Collection[str]) -> dict[str, str]:
    """The cross environment's identity of each foreign architecture a build's steps target
    (made now if the cache lacks it); refused when the farm's runner cannot cross-build."""
    if not host_arches:
        return {}
    runner = ctx.runner
    if not isinstance(runner, CrossBuilds):
        raise PlanError(
            f"building for {', '.join(sorted(host_arches))} needs cross-building, which the "
            f"{runner.name} runner cannot do (use the sbuild runner)"
        )
    return {arch: runner.cross_environment_id(arch) for arch in sorted(host_arches)}


@dataclass(frozen=True)
class BuildPlaces:
    """Where a build's package steps are built, decided at submit from the nodes online.

    A step for the farm's ``native`` architecture is built by a node of it; one for another
    architecture natively by a node whose own architecture it is, when one is online
    (``natively``: it advertises ``native-arch=arm64``; the step then requires ``arch=arm64``
    and ``native-arch=arm64``, so an amd64 node that merely has arm64 as a dpkg foreign
    architecture never takes it), else cross-built (``--host``) on a node of the native one
    (``cross``).  A package whose manifest says ``arch:`` is always built natively: the field
    names the node it needs.
    """

    native: str
    natively: frozenset[str]  # foreign architectures built by nodes of their own
    cross: frozenset[str]  # foreign architectures cross-built on the native one
    label_native: bool  # some online node lacks the native architecture: steps built on it say so
    must_native: frozenset[str] = frozenset()  # sources with a manifest arch:

    def requires(self, step: PlannedStep, wanted: Iterable[str]) -> str:
        """The labels ``step`` requires: the manifest's ``wanted`` and where it must be built."""
        if step.kind != StepKind.PACKAGE:
            return ""
        if step.source in self.must_native or step.host_arch in self.natively:
            return step_requirements(wanted, step.host_arch, native=True)
        return step_requirements(wanted, self.native if self.label_native and step.host_arch else None)


def labels_native(online: dict[str, frozenset[str]], native: str) -> bool:
    """Whether steps built on the farm's ``native`` architecture must say so (require
    ``arch=<native>``): some online node lacks it."""
    return any(f"arch={native}" not in labels for labels in online.values())


def _build_places(ctx: FarmContext, plan: Plan, native: str, must_native: set[str]) -> BuildPlaces:
    with ctx.db.session() as session:
        online = routing.online_nodes(session, ctx)
    foreign = {s.host_arch for s in plan.steps.values() if s.kind == StepKind.PACKAGE} - {"", native}
    forced = {s.host_arch for s in plan.steps.values() if s.source in must_native} - {native}
    own = f"{NATIVE_ARCH}="  # a node's own architecture, not a foreign one its dpkg accepts
    offered = {
        label.removeprefix(own) for labels in online.values() for label in labels if label.startswith(own)
    }
    natively = {arch for arch in foreign if arch in offered} | forced
    return BuildPlaces(
        native=native,
        natively=frozenset(natively),
        cross=frozenset(foreign - natively),
        label_native=labels_native(online, native),
        must_native=frozenset(must_native),
    )


@gcpause.paused()
def submit_build(
    ctx: FarmContext,
    manifest: Manifest,
    root: Path,
    user: str,
    prepared: dict[int, Path] | None = None,
    *,
    prepared_contexts: dict[int, Path] | None = None,
    prepared_files: dict[int, Path] | None = None,
    schedule_slot: str | None = None,
    recording: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> int:
    """Record a new build of ``manifest`` and release it.

    Its ``path`` trees are read below ``root``, unless already unpacked (by the API, from a
    remote client's uploads): ``prepared`` by package index, ``prepared_contexts`` by image index;
    ``prepared_files`` (by package index) holds the files uploaded with a package: a tree's
    upstream tarballs, or a .dsc and its files.  Every package becomes a Debian source package
    (:mod:`buildfarm.engine.srcpkg`): its step builds exactly that .dsc.
    ``schedule_slot`` (``<schedule>@<slot>``) names the scheduled slot it starts: a second build
    of one slot is refused by the database (IntegrityError), and nothing of it is recorded.
    ``recording`` is entered around the recording alone (the API's running-build cap: its lock
    is held while the cap is checked and the build recorded, not while trees are read or packed).

    Every input is read and checked, and the build planned and recorded, before the trees not
    packed before are packed (``dpkg-source -b``, critical path first): a step without its
    source package yet has no input key and waits, and each is keyed and released as its
    source package is stored, so nodes build while the rest packs.  A tree that does not pack
    fails the build with that one error (:mod:`buildfarm.engine.packing`), which is raised here too: this
    returns once every tree is packed.
    """
    names.check_simple_name(user, "user")
    ctx.dispatcher.check()  # an unreachable broker is found before anything is recorded
    check_source_urls(manifest, ctx.settings.fetch.url_policy)
    with (
        TemporaryDirectory(dir=ctx.work_root, prefix="submit-") as scratch,
        source_directories(manifest, root, ctx.settings.fetch.url_policy, prepared) as sources,
    ):
        resolver = SourceResolver(ctx, root, Path(scratch), prepared_files)
        examined = _examine(ctx, resolver, sources)
        images = _ImageSources.read(ctx, manifest, root, prepared_contexts)
        with recording():
            recorded = _record_build(
                ctx,
                manifest,
                user,
                [(package, found) for (package, _tree), found in zip(sources, examined, strict=True)],
                images,
                schedule_slot,
            )
        to_pack = {found.info.name: found for found in examined if isinstance(found, TreeToPack)}
        if to_pack and any(s.input_key for s in recorded.plan.steps.values()):
            ctx.dispatcher.advance(recorded.build_id)  # the steps of trees packed before start now
        pack_and_release(ctx, recorded, to_pack)
        resolver.cache.save_trees()
    return recorded.build_id


@dataclass(frozen=True)
class _ImageSources:
    """A manifest's images as a submit records them: each context packed and stored."""

    images: list[tuple[str, ImageInfo, str]]  # (origin, info, tree hash)
    tarballs: dict[str, str]  # image name -> sha256 of its packed context
    specs: dict[str, dict[str, object]]

    @classmethod
    def read(
        cls, ctx: FarmContext, manifest: Manifest, root: Path, prepared: dict[int, Path] | None
    ) -> _ImageSources:
        out = cls([], {}, {})
        with context_directories(manifest, root, ctx.settings.fetch.url_policy, prepared) as contexts:
            for image, directory in contexts:
                info_image = ImageInfo(
                    name=image.name,
                    dockerfile=image.dockerfile,
                    builder=image.builder,
                    build_args=tuple(sorted(image.build_args.items())),
                    depends=tuple(image.depends),
                )
                out.images.append((image.describe(), info_image, tree_hash(directory)))
                out.tarballs[image.name] = ctx.store.put_bytes(pack_tree(directory)).sha256
                out.specs[image.name] = image_spec_record(image)
        return out


def _record_build(  # noqa: PLR0917 - the pieces of one submit
    ctx: FarmContext,
    manifest: Manifest,
    user: str,
    packages: list[tuple[PackageSource, StoredSource | TreeToPack]],
    images: _ImageSources,
    schedule_slot: str | None,
) -> RecordedBuild:
    """Plan the build, key the steps whose sources are stored, and record it with every step;
    the others have no input key yet (they wait: :mod:`buildfarm.engine.advance`)."""
    planned = []
    tarballs: dict[str, str] = dict(images.tarballs)
    explicit: dict[str, tuple[str, ...]] = {}
    wanted: dict[str, tuple[str, ...]] = {}  # the manifest's requires: of each source package
    only_arch: dict[str, str] = {}  # the sources built for one architecture only
    must_native: set[str] = set()  # the sources whose manifest says arch: (a node of it builds)
    for package, found in packages:
        info = found.info
        stored = found if isinstance(found, StoredSource) else None
        planned.append((package.describe(), info, stored.source_key if stored else ""))
        tarballs[info.name] = stored.sha256 if stored else ""
        if package.depends:
            explicit[info.name] = tuple(package.depends)
        wanted[info.name] = tuple(package.requires)
        only = build_architecture(" ".join(info.architectures), package.arch)
        if only:
            only_arch[info.name] = only
        if package.arch:
            must_native.add(info.name)
    native = native_architecture(ctx)
    plan = make_plan(
        planned,
        images.images,
        explicit,
        architectures=manifest.architectures,
        native=native,
        only_arch=only_arch,
    )
    where = _build_places(ctx, plan, native, must_native)
    try:
        environment_id = ctx.runner.environment_id()
    except EnvironmentNotReady:  # never made inside a request: a worker makes it
        ctx.dispatcher.prepare_environment()
        raise
    image_environment_id = ctx.image_runner.environment_id() if images.images else ""
    cross = cross_environments(ctx, where.cross)
    keys = functools.partial(
        compute_input_keys,
        plan,
        environment_id,
        build_options(ctx),
        image_environment_id,
        image_options(ctx) if images.images else {},
        native=native,
        cross_environments=cross,
        built_natively=where.natively,
    )
    recorded = RecordedBuild(plan, tarballs, lambda names: keys(names=names))
    recorded.keys(recorded.keyable())
    with ctx.db.session() as session:
        build = Build(
            project=manifest.project,
            branch=manifest.branch,
            kind=manifest.kind.value,
            user=user,
            manifest=manifest.model_dump(mode="json"),
            environment_id=environment_id,
            schedule_slot=schedule_slot,
            packing_until=packing_lease(utcnow()) if not all(tarballs.values()) else None,
        )
        session.add(build)
        session.flush()
        rows = []
        for name in recorded.order:
            step = plan.steps[name]
            rows.append(
                dict(
                    build_id=build.id,
                    name=step.name,
                    version=step.version,
                    origin=step.origin,
                    source_sha256=tarballs[step.source or name],
                    tree_hash=step.tree_hash,
                    input_key=step.input_key,
                    own_key=step.own_key,
                    depends_on=list(step.depends_on),
                    priority=step.priority,
                    state=StepState.PENDING,
                    kind=step.kind,
                    image_spec=images.specs.get(name),
                    requires=where.requires(step, wanted.get(step.source, ())),
                    host_arch=step.host_arch,
                    arch_all=step.arch_all,
                    environment_id=cross.get(step.host_arch),
                )
            )
        # One executemany in plan order (ids follow it), not thousands of ORM objects to flush.
        session.execute(insert(Step), rows)
        recorded.build_id = build.id
    recorded.record = {
        "manifest": manifest.model_dump(mode="json"),
        "user": user,
        "environment": environment_id,
        "image_environment": image_environment_id,
    }
    return recorded


def moves_latest(kind: str) -> bool:
    return kind != BuildKind.PERSONAL.value
