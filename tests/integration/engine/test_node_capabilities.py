"""Node capabilities (issue 16): a step that requires labels goes to a node that has them, only
such a node takes it, and one that no online node can run says so and fails after the timeout.

Real database (SQLite and PostgreSQL); the dispatcher records its tickets (``farmkit``), so each
test sees where a ticket was routed; the real Celery path is ``tests/integration/dispatch``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import update

from buildfarm.engine import control, reap, routing
from buildfarm.engine.advance import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.steps import claim_next
from buildfarm.engine.submit import submit_build
from buildfarm.model.manifest import load_manifest
from buildfarm.model.types import BuildState, StepState
from buildfarm.state.models import Build, Step, utcnow

from debpkgs import make_package
from dispatchkit import ctx, ready_steps
from farmkit import dispatcher

AMD = ["arch=amd64", "builder=host", "cpu=small", "memory=small"]
ARM = ["arch=arm64", "builder=host", "cpu=small", "memory=small"]

__all__ = ["ctx"]  # the fixture, imported for this module's tests


def test_a_labelled_step_is_routed_to_and_taken_only_by_a_capable_node(ctx: FarmContext) -> None:
    routing.record_node(ctx, "amd", AMD)
    routing.record_node(ctx, "arm", ARM)
    with ctx.db.session() as session:
        [arm_step] = ready_steps(session, "proj", "ann", 1, requires="arch=arm64")
        [plain] = ready_steps(session, "proj", "bob", 1)
        steps = [session.get_one(Step, arm_step), session.get_one(Step, plain)]
        assert [node for _s, _a, node in routing.tickets(session, ctx, steps)] == ["arm", None]

    assert claim_next(ctx, arm_step, "amd", frozenset(AMD)) is None  # the arm64 step is not for it
    claim = claim_next(ctx, plain, "arm", frozenset(ARM))  # a plain ticket takes a plain step
    assert claim is not None and claim.step_id == plain
    claim = claim_next(ctx, arm_step, "arm", frozenset(ARM))
    assert claim is not None and claim.step_id == arm_step


def test_a_step_no_online_node_can_run_says_why_then_fails(ctx: FarmContext) -> None:
    routing.record_node(ctx, "amd", AMD)
    with ctx.db.session() as session:
        [step_id] = ready_steps(session, "proj", "ann", 1, requires="arch=arm64")
        build_id = session.get_one(Step, step_id).build_id

    [view] = control.show_build(ctx, build_id).steps
    assert view.waiting == "waiting: no node with arch=arm64"
    assert view.position is None

    first = reap(ctx)  # notes since when no node can run it; fails nothing yet
    assert first.unschedulable == []
    with ctx.db.session() as session:
        step = session.get_one(Step, step_id)
        assert step.state == StepState.READY and step.unrunnable_since is not None
        session.execute(  # half an hour later, as the reaper sees it
            update(Step)
            .where(Step.id == step_id)
            .values(unrunnable_since=utcnow() - dt.timedelta(seconds=1801))
        )
    assert reap(ctx).unschedulable == [build_id]
    advance_build(ctx, dispatcher(ctx).advances[-1])
    with ctx.db.session() as session:
        step = session.get_one(Step, step_id)
        build = session.get_one(Build, build_id)
        assert step.state == StepState.FAILED
        assert step.error is not None and step.error.startswith(
            "not built: no node with arch=arm64 (waited 18"
        )
        assert build.state == BuildState.FAILED


def test_a_node_that_comes_back_in_time_keeps_the_step(ctx: FarmContext) -> None:
    with ctx.db.session() as session:
        [step_id] = ready_steps(session, "proj", "ann", 1, requires="arch=arm64")
        build_id = session.get_one(Step, step_id).build_id
    reap(ctx)
    [view] = control.show_build(ctx, build_id).steps
    assert view.waiting is not None and view.waiting.startswith("waiting: no node online")
    routing.record_node(ctx, "arm", ARM)
    reap(ctx)
    with ctx.db.session() as session:
        assert session.get_one(Step, step_id).unrunnable_since is None
    [view] = control.show_build(ctx, build_id).steps
    assert view.waiting == "position 1 in class nightly"


def test_submit_records_what_each_step_requires(ctx: FarmContext, tmp_path: Path) -> None:
    root = tmp_path / "src"
    for name in ("plain", "armonly", "big"):
        make_package(root, name)
    (root / "buildfarm.yaml").write_text(
        "project: proj\nbranch: main\nkind: nightly\npackages:\n"
        "  - path: plain\n  - {path: armonly, arch: arm64}\n  - {path: big, requires: [cpu=large]}\n"
    )
    build_id = submit_build(ctx, load_manifest(root / "buildfarm.yaml"), root, "alice")
    shown = {s.name: s.requires for s in control.show_build(ctx, build_id).steps}
    assert shown == {"plain": "", "armonly": "arch=arm64,native-arch=arm64", "big": "cpu=large"}
