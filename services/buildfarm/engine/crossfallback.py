"""A foreign-architecture step whose native node went away is cross-built instead.

At submit, a step for another architecture than the farm's own (arm64 on an amd64 farm) is
placed on a node whose own architecture it is when one is online (``engine/submit.py``,
``BuildPlaces``): it requires ``arch=arm64,native-arch=arm64`` and its input key says "built
natively".  If that node goes offline before the step starts, the step would wait and fail after
``unschedulable_seconds``.  Instead, once no online node has been able to run it for
``cross_fallback_seconds`` (the reaper's ``unrunnable_since``), the reaper moves it, and every
other step of its build and architecture that has not started and is placed natively, to the
cross placement submit would have chosen: the cross environment (made now if the cache lacks
it), ``--host`` on a node of the farm's architecture, and new input keys for them and for their
pending dependents, computed by the one key function (:func:`~buildfarm.model.planner.
compute_input_keys`) from what the database holds, after checking that it gives every step its
recorded key back.  The moved steps go back to ``pending`` and the build is advanced: a cross
build of the same inputs made before is reused, else the step becomes ready for a node of the
farm's architecture.  Each moved step says why in its ``error`` until a node claims it.

The move and the build's advance are two steps, as everywhere in the farm: if the advance is
lost (the reaper dies between them), the moved steps stay pending until the next advance of
their build (any of its steps ending, or the reaper's for a build with nothing ready or running).

Never moved: a step whose manifest says ``arch:`` (the field names the node it needs: it keeps
waiting, then fails with the reason), one already claimed, running or reused.  Everything runs
under the build's row lock with updates conditional on the state and attempt each step was read
in: a claim that wins the race leaves the build as it was, and a second reaper finds nothing
left to move (a moved step no longer requires ``native-arch=``).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from buildfarm.engine import routing
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import BuildPlaces, build_options, image_options, labels_native
from buildfarm.model.errors import BuildfarmError
from buildfarm.model.labels import NATIVE_ARCH, parse_requires
from buildfarm.model.manifest import Manifest
from buildfarm.model.planner import ImageInfo, Plan, PlannedStep, compute_input_keys
from buildfarm.model.types import BuildState, ImageBuilder, StepKind, StepState
from buildfarm.runners.base import CrossBuilds
from buildfarm.state.models import Build, Step

log = logging.getLogger(__name__)

NOT_STARTED = (StepState.PENDING, StepState.READY)


class _Raced(Exception):
    """A step changed under the move (a node claimed it): the move is rolled back."""


@dataclass(frozen=True)
class Moved:
    build_id: int
    arch: str
    steps: tuple[str, ...]  # the steps moved to the cross placement
    rekeyed: tuple[str, ...]  # every step whose input key changed (they and their dependents)


def _placed_natively(step: Step, native: str) -> bool:
    return (
        step.kind == StepKind.PACKAGE
        and step.host_arch not in ("", native)
        and step.environment_id is None
        and f"{NATIVE_ARCH}={step.host_arch}" in parse_requires(step.requires)
    )


def fall_back_to_cross(ctx: FarmContext, now: dt.datetime) -> list[Moved]:
    """Move to cross builds the natively placed foreign steps no online node has been able to
    run for ``cross_fallback_seconds``; the builds returned are to be advanced."""
    runner = ctx.runner
    if not isinstance(runner, CrossBuilds):
        return []  # the farm cannot cross-build: they wait, then fail with the reason
    native = runner.native_architecture()
    since = now - dt.timedelta(seconds=ctx.settings.steps.cross_fallback_seconds)
    with ctx.db.session() as session:
        rows = session.scalars(
            select(Step)
            .join(Build, Step.build_id == Build.id)
            .where(
                Step.state == StepState.READY,
                Build.state == BuildState.RUNNING,
                Step.unrunnable_since <= since,
                Step.environment_id.is_(None),
            )
        ).all()
        forced: dict[int, set[str] | None] = {}
        for build_id in {s.build_id for s in rows}:
            forced[build_id] = _forced_origins(session.get_one(Build, build_id))
        due = sorted(  # no cross environment is made for a step that will not move
            {
                (s.build_id, s.host_arch, s.unrunnable_since)
                for s in rows
                if _placed_natively(s, native) and s.origin not in (forced[s.build_id] or {s.origin})
            }
        )
    moved = []
    done: set[tuple[int, str]] = set()
    for build_id, arch, unrunnable_since in due:
        if (build_id, arch) in done or unrunnable_since is None:
            continue
        done.add((build_id, arch))
        try:
            cross = runner.cross_environment_id(arch)  # made now if missing (outside any transaction)
        except BuildfarmError as exc:
            log.warning("build %s: cannot cross-build for %s instead: %s", build_id, arch, exc)
            continue
        reason = (
            f"cross-building for {arch}: no native {arch} node online since "
            f"{unrunnable_since:%Y-%m-%d %H:%M:%S} UTC"
        )
        try:
            with ctx.db.session() as session:
                result = _move(
                    session,
                    ctx,
                    build_id=build_id,
                    arch=arch,
                    native=native,
                    cross=cross,
                    reason=reason,
                    now=now,
                )
        except _Raced:
            log.info("build %s: a %s step was claimed while moving it; left as it was", build_id, arch)
            continue
        if result is not None:
            log.warning("build %s: %s (%s)", build_id, reason, ", ".join(result.steps))
            moved.append(result)
    return moved


def _forced_origins(build: Build) -> set[str] | None:
    """The origins (``PackageSource.describe``) of the packages whose manifest says ``arch:``;
    None when the recorded manifest cannot be read (then nothing is moved)."""
    try:
        manifest = Manifest.model_validate(build.manifest)
    except ValidationError:
        return None
    return {p.describe() for p in manifest.packages if p.arch}


def _plan_of(steps: list[Step]) -> Plan:
    """The build's plan as recorded: what :func:`compute_input_keys` reads of each step."""
    plan = Plan()
    for step in steps:
        image = None
        if step.kind == StepKind.IMAGE:
            spec = step.image_spec or {}
            args = spec.get("build_args") or {}
            image = ImageInfo(
                name=step.name,
                dockerfile=str(spec.get("dockerfile", "Dockerfile")),
                builder=ImageBuilder(str(spec.get("builder"))),
                build_args=tuple(sorted((str(k), str(v)) for k, v in dict(args).items())),
            )
        plan.steps[step.name] = PlannedStep(
            name=step.name,
            version=step.version,
            origin=step.origin,
            tree_hash=step.tree_hash,
            binaries=(),
            depends_on=tuple(step.depends_on),
            priority=step.priority,
            kind=step.kind,
            image=image,
            host_arch=step.host_arch,
            arch_all=step.arch_all,
        )
    return plan


def _keys(
    ctx: FarmContext, build: Build, plan: Plan, native: str, placed: dict[str, str | None]
) -> dict[str, tuple[str, str]]:
    images = any(s.image is not None for s in plan.steps.values())
    image_environment = ""
    if images:
        record = ctx.store.get_build_manifest(build.id) or {}
        image_environment = str(record.get("image_environment", ""))
    compute_input_keys(
        plan,
        build.environment_id,
        build_options(ctx),
        image_environment,
        image_options(ctx) if images else {},
        native=native,
        placed=placed,
    )
    return {name: (s.input_key, s.own_key) for name, s in plan.steps.items()}


def _move(
    session: Session,
    ctx: FarmContext,
    *,
    build_id: int,
    arch: str,
    native: str,
    cross: str,
    reason: str,
    now: dt.datetime,
) -> Moved | None:
    build = session.get(Build, build_id, with_for_update=True)  # as advance: one mover at a time
    if build is None or build.state != BuildState.RUNNING:
        return None
    steps = list(session.scalars(select(Step).where(Step.build_id == build_id).order_by(Step.id)))
    forced = _forced_origins(build)
    if forced is None:
        log.warning("build %s: its recorded manifest does not load; its %s steps stay native", build_id, arch)
        return None
    online = routing.online_nodes(session, ctx, now)
    movable = [
        s
        for s in steps
        if s.host_arch == arch
        and s.state in NOT_STARTED
        and _placed_natively(s, native)
        and s.origin not in forced
    ]
    if not any(s.state == StepState.READY and routing.why_unrunnable(online, s.requires) for s in movable):
        return None  # a node of it came back, or the step was claimed or forced native
    if any(not s.input_key for s in steps):
        return None  # its submit is still making source packages: moved on a pass after they are
    placed: dict[str, str | None] = {
        s.name: s.environment_id
        for s in steps
        if s.kind == StepKind.PACKAGE and s.host_arch not in ("", native)
    }
    plan = _plan_of(steps)
    if {n: key for n, (key, _own) in _keys(ctx, build, plan, native, placed).items()} != {
        s.name: s.input_key for s in steps
    }:
        log.warning(
            "build %s: its recorded input keys do not compute again; its %s steps stay native", build_id, arch
        )
        return None
    new = _keys(ctx, build, plan, native, placed | {s.name: cross for s in movable})
    by_name = {s.name: s for s in steps}
    rekeyed = sorted(name for name, key in new.items() if key[0] != by_name[name].input_key)
    if any(by_name[name].state not in NOT_STARTED for name in rekeyed):
        return None  # cannot happen: only steps that have not started depend on one that has not
    where = BuildPlaces(
        native=native,
        natively=frozenset(),
        cross=frozenset({arch}),
        label_native=labels_native(online, native),
    )
    moving = {s.name for s in movable}
    for name in sorted(moving | set(rekeyed)):
        step = by_name[name]
        values: dict[str, object] = {"input_key": new[name][0], "own_key": new[name][1], "resolved_key": None}
        if name in moving:
            wanted = parse_requires(step.requires) - {f"arch={arch}", f"{NATIVE_ARCH}={arch}"}
            values |= {
                "requires": where.requires(plan.steps[name], wanted),
                "environment_id": cross,
                "state": StepState.PENDING,  # advance reuses a cross build of it, or releases it
                "ready_at": None,
                "ticket_at": None,
                "unrunnable_since": None,
                "error": reason,
            }
        changed = session.execute(
            update(Step)
            .where(Step.id == step.id, Step.state == step.state, Step.attempt == step.attempt)
            .values(**values)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise _Raced(name)
    return Moved(build_id, arch, tuple(sorted(moving)), tuple(rekeyed))
