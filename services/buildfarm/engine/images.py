"""Image steps in the engine: their build contexts at submit, their registry references at run.

A context is a directory of the manifest's tree or a git checkout (``git`` + ``ref`` +
``subdir``), packed like a package's source tree (deterministic tarball, tree hash), so the
Dockerfile and everything it ``COPY``s are part of the step's input key.

A reused image step keeps the reference its original build pushed.  A later image step of the
new build may still say ``FROM ${BUILDFARM_IMAGE_PREFIX}/<that image>``, so before it builds,
each image it depends on is copied into the new build's namespace (a registry-side tag: blobs
are mounted, no bytes move).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from buildfarm.backends.base import ImageRegistry
from buildfarm.model.images import IMAGE_TAG, image_destination, split_reference
from buildfarm.model.manifest import ImageSource
from buildfarm.model.types import DEFAULT_IMAGE_BUILDER, ImageBuilder, OutputKind, StepKind
from buildfarm.runners.base import ImageSpec
from buildfarm.state.models import Step, StepOutput


def image_spec_record(image: ImageSource) -> dict[str, object]:
    """What the database keeps of an image step (Step.image_spec)."""
    return {
        "dockerfile": image.dockerfile,
        "builder": image.builder.value,
        "build_args": dict(sorted(image.build_args.items())),
    }


def image_spec(name: str, record: dict[str, object], prefix: str) -> ImageSpec:
    args = record.get("build_args") or {}
    assert isinstance(args, dict)
    return ImageSpec(
        name=name,
        dockerfile=str(record.get("dockerfile") or "Dockerfile"),
        builder=ImageBuilder(str(record.get("builder") or DEFAULT_IMAGE_BUILDER)),
        build_args=tuple((str(k), str(v)) for k, v in sorted(args.items())),
        destination=image_destination(prefix, name),
    )


def pushed_reference(session: Session, producer_step_id: int) -> str | None:
    """The reference an image step pushed (its output row of kind IMAGE)."""
    return session.scalars(
        select(StepOutput.filename).where(
            StepOutput.step_id == producer_step_id, StepOutput.kind == OutputKind.IMAGE
        )
    ).first()


def dependency_images(session: Session, step: Step) -> list[tuple[str, str]]:
    """(image name, reference it was pushed as) of every image step ``step`` depends on."""
    by_name = {s.name: s for s in step.build.steps}
    out: list[tuple[str, str]] = []
    for name in step.depends_on:
        dep = by_name.get(name)
        if dep is None or dep.kind != StepKind.IMAGE:
            continue
        producer = dep.reused_from if dep.reused_from is not None else dep.id
        reference = pushed_reference(session, producer)
        if reference is not None:
            out.append((name, reference))
    return out


def bring_into_namespace(
    client: ImageRegistry,
    prefix: str,
    images: list[tuple[str, str]],
    log: Callable[[str], None],
) -> None:
    """Copy each (name, reference) not yet under ``prefix`` to ``<prefix>/<name>:latest``."""
    for name, reference in images:
        wanted = image_destination(prefix, name)
        if reference == wanted:
            continue
        _host, repository, ref = split_reference(reference)
        _whost, dest_repository, _tag = split_reference(wanted)
        client.copy_image(repository, ref, dest_repository, IMAGE_TAG)
        log(f"buildfarm: image {reference} (reused) is copied to {wanted}")
