"""Why a build's steps are not running yet: their place in the queue, or what they wait for.

``build show`` (and the API's build view) gives each pending or ready step one line:

* ``waiting: dependencies (libfoo, libbar)`` — a pending step, until those succeed;
* ``waiting: no node with arch=arm64`` — a ready step that no online node can run (it fails
  with that reason after ``unschedulable_seconds``);
* ``position 3 in class nightly`` — a ready step, third to be taken among the ready steps of
  its priority class if nothing else arrives: the scheduler's own order
  (:func:`buildfarm.engine.fairshare.order_ready`: tenants' fair share, then critical path,
  then age), computed from the farm's ready steps in one query.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from buildfarm.engine import fairshare, routing
from buildfarm.engine.context import FarmContext
from buildfarm.model.types import BuildState, StepState
from buildfarm.state.models import Build, Step, utcnow


@dataclass(frozen=True)
class Wait:
    position: int | None  # 1 = the next step of its class a free node takes
    reason: str


def class_name(klass: int, ctx: FarmContext) -> str:
    """A priority class by the build kinds in it: "nightly", or "on-demand/nightly" when shared."""
    kinds = [kind for kind, value in ctx.settings.steps.priorities.items() if value == klass]
    return "/".join(kinds) or str(klass)


def explain(session: Session, ctx: FarmContext, build: Build) -> dict[int, Wait]:
    """The wait of every pending or ready step of ``build``, by step id."""
    out: dict[int, Wait] = {}
    by_name = {s.name: s for s in build.steps}
    for step in build.steps:
        if step.state == StepState.PENDING and not step.input_key:
            out[step.id] = Wait(None, "waiting: its source package is being made")
        elif step.state == StepState.PENDING:
            unfinished = [d for d in step.depends_on if by_name[d].state != StepState.SUCCEEDED]
            out[step.id] = Wait(
                None, "waiting: dependencies" + (f" ({', '.join(unfinished)})" if unfinished else "")
            )
    ready = [s for s in build.steps if s.state == StepState.READY]
    if not ready or build.state != BuildState.RUNNING:
        return out
    online = routing.online_nodes(session, ctx)
    queued = list(ready)
    for step in ready:
        why = routing.why_unrunnable(online, step.requires)
        if why is not None:
            out[step.id] = Wait(None, f"waiting: {why}")
            queued.remove(step)
    if queued:
        out.update(_positions(session, ctx, {s.id for s in queued}))
    return out


def _positions(session: Session, ctx: FarmContext, wanted: set[int]) -> dict[int, Wait]:
    rows = session.execute(
        select(Step.id, Build.kind, Build.project, Build.user, Step.priority, Step.ready_at)
        .join(Build, Step.build_id == Build.id)
        .where(Step.state == StepState.READY, Build.state == BuildState.RUNNING)
    ).all()
    now = utcnow()
    settings = ctx.settings
    steps = [
        fairshare.ReadyStep(
            step_id, fairshare.class_of(kind, settings), (project, user), priority, ready_at or now
        )
        for step_id, kind, project, user, priority, ready_at in rows
    ]
    own, farm = fairshare.passes(session, {s.tenant for s in steps})
    seen: dict[int, int] = {}
    out = {}
    for step in fairshare.order_ready(steps, own, farm, settings):
        seen[step.klass] = seen.get(step.klass, 0) + 1
        if step.step_id in wanted:
            position = seen[step.klass]
            out[step.step_id] = Wait(position, f"position {position} in class {class_name(step.klass, ctx)}")
    return out
