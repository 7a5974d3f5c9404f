"""A node's warm-up at start (:func:`steps.warm_up`) runs its step statements and changes nothing:
a ready step stays ready at its attempt, unclaimed, and the tenant has no charge."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from buildfarm.engine import steps
from buildfarm.model.types import StepState
from buildfarm.state.models import Build, Step, TenantUsage

from farmkit import make_test_context


def test_warm_up_changes_nothing(tmp_path: Path) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    with ctx.db.session() as session:
        build = Build(project="p", branch="main", kind="nightly", user="u", manifest={}, environment_id="e")
        session.add(build)
        session.flush()
        session.add(
            Step(
                build_id=build.id,
                name="pkg",
                version="1",
                origin="o",
                source_sha256="0" * 64,
                tree_hash="t",
                input_key="0" * 64,
                depends_on=[],
                state=StepState.READY,
            )
        )
    steps.warm_up(ctx)
    steps.warm_up(ctx)  # twice: as a node started again
    with ctx.db.session() as session:
        (step,) = session.scalars(select(Step)).all()
        assert (step.state, step.attempt, step.lease_owner, step.node) == (StepState.READY, 0, None, None)
        assert session.scalar(select(func.count()).select_from(TenantUsage)) == 0
    ctx.db.dispose()
