"""The scheduler's queues (0017) stay what a scan of the ready steps says, through every way a
step enters or leaves ``ready``: release, claim, failure, cancel, retry, the reaper taking an
expired lease back, a vanished builder.

A claim reads the queues of its pool (:func:`buildfarm.engine.fairshare.pool_queues`) instead
of every ready step; :func:`_assert_queues_hold_the_ready_steps` compares them with what the
old scan (every ready step, grouped by its build's kind and tenant) gives, so a ready step left
out of its queue (invisible to the fair share) or a queue that shows steps it no longer holds
fails it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from buildfarm.engine import advance_build, builders, control, fairshare
from buildfarm.engine.context import FarmContext
from buildfarm.engine.reaper import reap
from buildfarm.engine.steps import claim_next, finish_step
from buildfarm.model.types import StepState
from buildfarm.state.models import Build, Step, StepQueue, utcnow

from farmkit import dispatcher, make_test_context, recorded_build


def _add_build(ctx: FarmContext, project: str, user: str, kind: str, steps: dict[str, list[str]]) -> int:
    """A running build whose steps (name -> the names it depends on) are pending; "arm-" steps
    require arch=arm64."""
    arm = {name: "arch=arm64" for name in steps if name.startswith("arm-")}
    return recorded_build(ctx, list(steps), steps, project=project, user=user, kind=kind, requires=arm)


def _assert_queues_hold_the_ready_steps(session: Session, ctx: FarmContext) -> None:
    """Each ready step is in the queue of its labels, build kind and tenant, and the queues a
    claim reads are exactly the scan's groups of ready steps, with the same oldest step."""
    ready = session.execute(
        select(Step.requires, Build.kind, Build.project, Build.user, Step.ready_at, StepQueue)
        .join(Build, Step.build_id == Build.id)
        .outerjoin(StepQueue, Step.queue_id == StepQueue.id)
        .where(Step.state == StepState.READY)
    ).all()
    for requires, kind, project, user, _ready_at, queue in ready:
        assert queue is not None, f"a ready step of {project}/{user} is in no queue"
        assert (queue.requires, queue.kind, queue.project, queue.user) == (requires, kind, project, user)
    scanned: dict[str, dict[tuple[str, str, str], dt.datetime]] = {}
    for requires, kind, project, user, ready_at, _queue in ready:
        groups = scanned.setdefault(requires, {})
        key = (kind, project, user)
        groups[key] = min(groups.get(key, ready_at), ready_at)
    pools = set(session.scalars(select(StepQueue.requires))) | set(scanned)
    for pool in pools:
        queues, _own, _farm = fairshare.pool_queues(session, pool, ctx.settings)
        read = {(q.kind, *q.tenant): q.oldest for q in queues}
        assert read == scanned.get(pool, {}), f"pool {pool!r}"


def _check(ctx: FarmContext) -> None:
    with ctx.db.session() as session:
        _assert_queues_hold_the_ready_steps(session, ctx)


def _ready_count(ctx: FarmContext) -> int:
    with ctx.db.session() as session:
        return session.scalar(select(func.count()).where(Step.state == StepState.READY)) or 0


def test_the_queues_follow_the_ready_steps_through_every_change(tmp_path: Path) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}", reaper_seconds=1.0)
    nightly = _add_build(
        ctx, "core", "ann", "nightly", {"lib": [], "app": ["lib"], "arm-tool": [], "doc": []}
    )
    release = _add_build(ctx, "web", "bob", "release", {"site": [], "api": [], "cli": ["api"]})
    for build_id in (nightly, release):
        advance_build(ctx, build_id)
    _check(ctx)
    assert _ready_count(ctx) == 5  # lib, arm-tool, doc, site, api

    # claims take steps out of their queues; a failure skips what depends on it
    first = claim_next(ctx, dispatcher(ctx).runs[0][0], "node1", frozenset())
    assert first is not None
    _check(ctx)
    taken = [first]
    while len(taken) < 4:
        claim = claim_next(ctx, dispatcher(ctx).runs[0][0], "node1", frozenset())
        assert claim is not None
        taken.append(claim)
        _check(ctx)
    by_name = {c.name: c for c in taken}
    assert set(by_name) == {"site", "api", "lib", "doc"}  # release first; arm-tool needs arm64
    assert finish_step(ctx, by_name["api"], [], "compiler crashed")
    advance_build(ctx, release)
    _check(ctx)

    # the reaper takes an expired lease back: the step is ready again, in its queue
    with ctx.db.session() as session:
        session.execute(
            update(Step)
            .where(Step.id == by_name["lib"].step_id)
            .values(lease_expires_at=utcnow() - dt.timedelta(seconds=60))
        )
    assert reap(ctx).expired == [by_name["lib"].step_id]
    _check(ctx)

    # a vanished builder puts its step back, in its queue
    assert builders.requeue_lost(ctx, by_name["doc"].step_id, 1, by_name["doc"].owner, "its pod vanished")
    _check(ctx)
    again = claim_next(ctx, by_name["site"].step_id, "node2", frozenset())  # a spent ticket: the best step
    assert again is not None and again.build_id == nightly
    _check(ctx)

    # cancel empties the build's queue; retry fills it again
    control.cancel_build(ctx, nightly)
    _check(ctx)
    with ctx.db.session() as session:
        for pool in ("", "arch=arm64"):
            assert all(
                q.tenant != ("core", "ann") for q in fairshare.pool_queues(session, pool, ctx.settings)[0]
            )
    advance_build(ctx, nightly)
    control.retry_build(ctx, nightly)
    advance_build(ctx, nightly)
    _check(ctx)
    assert _ready_count(ctx) == 3  # lib, arm-tool, doc again (the release's site still runs)


def test_a_tenant_keeps_one_queue_per_kind_and_labels(tmp_path: Path) -> None:
    """Two builds of one tenant and kind share a queue; another kind or other labels get their own."""
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    builds = [
        _add_build(ctx, "core", "ann", "nightly", {"a": [], "arm-b": []}),
        _add_build(ctx, "core", "ann", "nightly", {"c": []}),
        _add_build(ctx, "core", "ann", "personal", {"d": []}),
    ]
    for build_id in builds:
        advance_build(ctx, build_id)
    with ctx.db.session() as session:
        queues = {
            (q.requires, q.kind): q.id
            for q in session.scalars(select(StepQueue).where(StepQueue.project == "core"))
        }
        assert set(queues) == {("", "nightly"), ("arch=arm64", "nightly"), ("", "personal")}
        in_queue = dict(session.execute(select(Step.name, Step.queue_id)).all())
    assert in_queue == {
        "a": queues[("", "nightly")],
        "c": queues[("", "nightly")],
        "arm-b": queues[("arch=arm64", "nightly")],
        "d": queues[("", "personal")],
    }
    _check(ctx)
