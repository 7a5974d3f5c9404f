"""A claim on PostgreSQL without a transaction (issue 16, item 6): each (class, tenant) tried
chooses, locks, leases and charges in one statement, the log key computed by the server.

On both databases: the log key is :func:`log_key_for`'s for any step name (the statement
joins the step's safe name, stored with its row, into ``STEP_LOG_KEY``), and a ready step whose
lost attempt might be adopted is still claimed (the one statement leaves it to the transaction
of old).  On
PostgreSQL: a claim is two statements and no BEGIN, an advance that finds nothing to do one, and
one that releases commits without waiting for the disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, update

from buildfarm.engine.advance import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.steps import claim_next, finish_step, log_key_for
from buildfarm.model.types import StepState
from buildfarm.state.models import Step, TenantUsage

from dispatchkit import ready_steps
from farmkit import make_test_context

pytestmark = pytest.mark.integration

NAMES = ["gcc-12", "lib_foo", "g++", "ünïcode", "日本", "a b/c", "emoji😀", "x.y-Z9"]


@pytest.fixture
def ctx(tmp_path: Path, database_url: str) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, database_url)
    yield context
    context.db.dispose()


def test_a_claim_keys_its_log_as_log_key_for_whatever_the_steps_name(ctx: FarmContext) -> None:
    with ctx.db.session() as session:
        ids = ready_steps(session, "alpha", "ann", len(NAMES), names=NAMES)
    claimed = {}
    for step_id in ids:
        claim = claim_next(ctx, step_id, "node1", frozenset())
        assert claim is not None
        claimed[claim.step_id] = claim
    assert sorted(claimed) == sorted(ids)
    with ctx.db.session() as session:
        for step in session.scalars(select(Step).where(Step.id.in_(ids))):
            expected = log_key_for(step.build_id, step.name, 1)
            assert claimed[step.id].log_key == step.log_key == expected
            assert (step.state, step.attempt, step.lease_owner) == (
                StepState.RUNNING,
                1,
                claimed[step.id].owner,
            )


def test_a_ready_step_whose_lost_attempt_might_be_adopted_is_claimed_on_a_new_attempt(
    ctx: FarmContext,
) -> None:
    """The reaper took attempt 1's lease back (``attempt_lost``); the host runner follows no Job,
    so the claim builds it again as attempt 2, and charges its tenant."""
    with ctx.db.session() as session:
        [step_id] = ready_steps(session, "alpha", "ann", 1)
        session.execute(update(Step).where(Step.id == step_id).values(attempt=1, attempt_lost=True))
    claim = claim_next(ctx, step_id, "node1", frozenset())
    assert claim is not None and (claim.step_id, claim.attempt, claim.adopted) == (step_id, 2, False)
    with ctx.db.session() as session:
        step = session.get_one(Step, step_id)
        assert (step.state, step.attempt, step.attempt_lost) == (StepState.RUNNING, 2, False)
        assert step.log_key == claim.log_key == log_key_for(step.build_id, step.name, 2)
        assert session.get(TenantUsage, ("alpha", "ann")) is not None


def _count(engines: dict[str, Engine], seen: list[tuple[str, str]]) -> list[tuple[Engine, Any]]:
    """Record each statement run on ``engines`` as (the engine's name, its text)."""
    hooks = []
    for label, engine in engines.items():

        def statement(_conn: Any, _cursor: Any, text: str, *_args: Any, label: str = label) -> None:
            seen.append((label, text))

        event.listen(engine, "before_cursor_execute", statement)
        hooks.append((engine, statement))
    return hooks


def _one_ready_one_waiting(ctx: FarmContext) -> tuple[int, int]:
    """Two steps of one build (their ids): the first ready, the second pending on it."""
    with ctx.db.session() as session:
        first, second = ready_steps(session, "alpha", "ann", 2)
        name = session.get_one(Step, first).name
        session.execute(
            update(Step).where(Step.id == second).values(state=StepState.PENDING, depends_on=[name])
        )
    return first, second


def test_a_claim_on_postgresql_is_two_statements_and_no_transaction(
    ctx: FarmContext, database_url: str
) -> None:
    """Both on the pool whose connections commit each statement alone: no BEGIN, no COMMIT."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite's claim is one transaction: its BEGIN and COMMIT cost no round trip")
    first, _second = _one_ready_one_waiting(ctx)
    seen: list[tuple[str, str]] = []
    hooks = _count({"transactions": ctx.db.engine, "autocommit": ctx.db.statements_engine}, seen)
    try:
        claim = claim_next(ctx, first, "node1", frozenset())
        claimed = list(seen)
        seen.clear()
        assert claim is not None and claim.step_id == first
        advance_build(ctx, claim.build_id)  # its pending step waits on the running one
    finally:
        for engine, hook in hooks:
            event.remove(engine, "before_cursor_execute", hook)
    assert [label for label, _text in claimed] == ["autocommit", "autocommit"], claimed
    assert [label for label, _text in seen] == ["autocommit"], seen


def test_an_advance_that_releases_commits_asynchronously_on_postgresql(
    ctx: FarmContext, database_url: str
) -> None:
    """The statement that locks the build sets its transaction's commit not to wait for the disk
    (``advance_build`` says why that is safe); the release is written all the same."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no asynchronous commit")
    first, second = _one_ready_one_waiting(ctx)
    claim = claim_next(ctx, first, "node1", frozenset())
    assert claim is not None and claim.step_id == first
    assert finish_step(ctx, claim, [], None)
    seen: list[tuple[str, str]] = []
    hooks = _count({"transactions": ctx.db.engine}, seen)
    try:
        advance_build(ctx, claim.build_id)
    finally:
        for engine, hook in hooks:
            event.remove(engine, "before_cursor_execute", hook)
    assert seen and "FOR UPDATE" in seen[0][1] and "set_config" in seen[0][1], seen[:1]
    with ctx.db.session() as session:
        assert session.get_one(Step, second).state == StepState.READY
