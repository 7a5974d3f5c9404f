"""Turn a manifest into a build: pack sources, plan, compute input keys, record, release."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

from buildfarm.engine.context import FarmContext
from buildfarm.engine.fetch import check_source_urls, context_directories, source_directories
from buildfarm.engine.images import image_spec_record
from buildfarm.engine.srcpkg import SourceResolver
from buildfarm.model import names
from buildfarm.model.debsource import pack_source_package, source_key
from buildfarm.model.images import registry_host
from buildfarm.model.manifest import Manifest
from buildfarm.model.planner import ImageInfo, compute_input_keys, make_plan
from buildfarm.model.sources import pack_tree, tree_hash
from buildfarm.model.types import BuildKind, StepState
from buildfarm.runners.base import EnvironmentNotReady
from buildfarm.state.models import Build, Step

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
) -> int:
    """Record a new build of ``manifest`` and release it.

    Its ``path`` trees are read below ``root``, unless already unpacked (by the API, from a
    remote client's uploads): ``prepared`` by package index, ``prepared_contexts`` by image index;
    ``prepared_files`` (by package index) holds the files uploaded with a package: a tree's
    upstream tarballs, or a .dsc and its files.  Every package becomes a Debian source package
    (:mod:`buildfarm.engine.srcpkg`): its step builds exactly that .dsc.
    ``schedule_slot`` (``<schedule>@<slot>``) names the scheduled slot it starts: a second build
    of one slot is refused by the database (IntegrityError), and nothing of it is recorded.
    """
    names.check_simple_name(user, "user")
    ctx.dispatcher.check()  # an unreachable broker is found before anything is recorded
    check_source_urls(manifest, ctx.settings.fetch.url_policy)
    planned = []
    tarballs: dict[str, str] = {}
    explicit: dict[str, tuple[str, ...]] = {}
    with (
        TemporaryDirectory(dir=ctx.work_root, prefix="submit-") as scratch,
        source_directories(manifest, root, ctx.settings.fetch.url_policy, prepared) as sources,
    ):
        resolver = SourceResolver(ctx, root, Path(scratch), prepared_files)
        for index, (package, directory) in enumerate(sources):
            srcpkg, info = resolver.resolve(index, package, directory)
            planned.append((package.describe(), info, source_key(srcpkg)))
            tarballs[info.name] = ctx.store.put_bytes(pack_source_package(srcpkg)).sha256
            if package.depends:
                explicit[info.name] = tuple(package.depends)
    images: list[tuple[str, ImageInfo, str]] = []
    specs: dict[str, dict[str, object]] = {}
    with context_directories(manifest, root, ctx.settings.fetch.url_policy, prepared_contexts) as contexts:
        for image, directory in contexts:
            info_image = ImageInfo(
                name=image.name,
                dockerfile=image.dockerfile,
                builder=image.builder,
                build_args=tuple(sorted(image.build_args.items())),
                depends=tuple(image.depends),
            )
            images.append((image.describe(), info_image, tree_hash(directory)))
            tarballs[image.name] = ctx.store.put_bytes(pack_tree(directory)).sha256
            specs[image.name] = image_spec_record(image)
    plan = make_plan(planned, images, explicit)
    try:
        environment_id = ctx.runner.environment_id()
    except EnvironmentNotReady:  # never made inside a request: a worker makes it
        ctx.dispatcher.prepare_environment()
        raise
    image_environment_id = ctx.image_runner.environment_id() if images else ""
    compute_input_keys(
        plan,
        environment_id,
        build_options(ctx),
        image_environment_id,
        image_options(ctx) if images else {},
    )

    with ctx.db.session() as session:
        build = Build(
            project=manifest.project,
            branch=manifest.branch,
            kind=manifest.kind.value,
            user=user,
            manifest=manifest.model_dump(mode="json"),
            environment_id=environment_id,
            schedule_slot=schedule_slot,
        )
        session.add(build)
        for name in plan.order():
            step = plan.steps[name]
            session.add(
                Step(
                    build=build,
                    name=step.name,
                    version=step.version,
                    origin=step.origin,
                    source_sha256=tarballs[name],
                    tree_hash=step.tree_hash,
                    input_key=step.input_key,
                    depends_on=list(step.depends_on),
                    priority=step.priority,
                    state=StepState.PENDING,
                    kind=step.kind,
                    image_spec=specs.get(name),
                )
            )
        session.flush()
        build_id = build.id
    ctx.store.put_build_manifest(
        build_id,
        {
            "manifest": manifest.model_dump(mode="json"),
            "user": user,
            "environment": environment_id,
            "image_environment": image_environment_id,
            "steps": {n: {"input_key": s.input_key, "source": tarballs[n]} for n, s in plan.steps.items()},
        },
    )
    ctx.dispatcher.advance(build_id)
    return build_id


def moves_latest(kind: str) -> bool:
    return kind != BuildKind.PERSONAL.value
