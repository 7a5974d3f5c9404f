"""A finish records the result, its outputs and the corrected charge only under its lease
(issue 16: on PostgreSQL the three are one statement, so each part must hang on the lease).

Both databases: a late finish of an attempt whose lease went to another node records nothing
(no outputs, no charge); an accepted one records its outputs under its attempt and corrects its
tenant's charge from the claim's start to the node-seconds the step held.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from buildfarm.backends.base import ObjectRef
from buildfarm.engine.context import FarmContext
from buildfarm.engine.steps import Output, claim_next, finish_step
from buildfarm.model.types import OutputKind, StepState
from buildfarm.state.models import Step, StepOutput, TenantUsage, use_clock

from dispatchkit import ready_steps
from farmkit import make_test_context

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
HELD_SECONDS = 500.0
OUTPUTS: list[Output] = [
    ("hello_1.0_amd64.deb", ObjectRef("a" * 64, 1234), OutputKind.DEB),
    ("hello_1.0_amd64.buildinfo", ObjectRef("b" * 64, 56), OutputKind.BUILDINFO),
]


@pytest.fixture
def ctx(tmp_path: Path, database_url: str) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, database_url)
    yield context
    context.db.dispose()


def _pass_seconds(ctx: FarmContext) -> float:
    with ctx.db.session() as session:
        value = session.scalar(
            select(TenantUsage.pass_seconds).where(TenantUsage.project == "alpha", TenantUsage.user == "ann")
        )
    assert value is not None
    return value


def _outputs(ctx: FarmContext, step_id: int) -> set[tuple[int, str, str, int, OutputKind]]:
    with ctx.db.session() as session:
        return {
            (o.attempt, o.filename, o.sha256, o.size, o.kind)
            for o in session.scalars(select(StepOutput).where(StepOutput.step_id == step_id))
        }


def test_a_finish_records_outputs_and_charge_only_under_its_lease(ctx: FarmContext) -> None:
    with ctx.db.session() as session:
        first, second = ready_steps(session, "alpha", "ann", 2)
    with use_clock(lambda: T0):
        lost = claim_next(ctx, first, "node1", frozenset())
        kept = claim_next(ctx, second, "node1", frozenset())
    assert lost is not None and kept is not None and lost.step_id != kept.step_id
    with ctx.db.session() as session:  # the reaper gave the lost one's step to another node
        session.execute(update(Step).where(Step.id == lost.step_id).values(lease_owner="node2/other"))
    charged = _pass_seconds(ctx)

    with use_clock(lambda: T0 + dt.timedelta(seconds=HELD_SECONDS)):
        assert finish_step(ctx, lost, OUTPUTS, None, "identity") is False
    assert _outputs(ctx, lost.step_id) == set()
    assert _pass_seconds(ctx) == charged
    with ctx.db.session() as session:
        step = session.get_one(Step, lost.step_id)
        assert (step.state, step.lease_owner) == (StepState.RUNNING, "node2/other")
        assert step.output_identity is None

    with use_clock(lambda: T0 + dt.timedelta(seconds=HELD_SECONDS)):
        assert finish_step(ctx, kept, OUTPUTS, None, "identity") is True
    assert _outputs(ctx, kept.step_id) == {
        (kept.attempt, name, ref.sha256, ref.size, kind) for name, ref, kind in OUTPUTS
    }
    default = ctx.settings.steps.share_charge_seconds
    assert _pass_seconds(ctx) == pytest.approx(charged + HELD_SECONDS - default)  # weight 1
    with ctx.db.session() as session:
        step = session.get_one(Step, kept.step_id)
        assert (step.state, step.lease_owner, step.output_identity) == (StepState.SUCCEEDED, None, "identity")
        assert step.finished_at == T0 + dt.timedelta(seconds=HELD_SECONDS)
