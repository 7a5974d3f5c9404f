"""Claims at once on PostgreSQL (issue 16): they do not take turns on one row, and each ready
step is still claimed exactly once.

Until 0015 every claim locked the farm's virtual-time row, so on PostgreSQL the claims of all
nodes queued on it; now a claim writes only its step's row and its tenant's.  Real PostgreSQL,
real connections: a claim left open (its transaction not committed) must not hold up the claim
of another tenant (the second connection gives up on any lock after ``lock_timeout``, so the
old code fails instead of hanging), and threads claiming 40 steps of 4 tenants at once claim
each step once, all of them, and charge every claim; advances making one tenant's queue at
once (0017) share one row.  Nothing is timed: the assertions hold for every interleaving.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from buildfarm.engine import fairshare, steps
from buildfarm.engine.context import FarmContext
from buildfarm.engine.steps import Claim, claim_next
from buildfarm.model.types import StepState
from buildfarm.state.models import Step, StepQueue, TenantUsage, utcnow

from dispatchkit import ready_steps
from farmkit import make_test_context
from helpers import scratch_database

pytestmark = pytest.mark.integration

LOCK_TIMEOUT_MS = 10_000
"""A bound for the second connection's lock waits: a claim that waits on the open one fails."""
THREADS = 8
ROUNDS = 200
"""Tickets a thread uses at most (40 steps need far fewer): a bug fails the test, never hangs it."""


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    with scratch_database(postgres_url, "claims") as url:
        yield url


@pytest.fixture
def ctx(tmp_path: Path, pg_url: str) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, pg_url)
    yield context
    context.db.dispose()


def test_an_open_claim_does_not_hold_up_another_tenants_claim(
    ctx: FarmContext, pg_url: str, tmp_path: Path
) -> None:
    with ctx.db.session() as session:
        [first] = ready_steps(session, "alpha", "ann", 1)
        [second] = ready_steps(session, "beta", "bob", 1)
    impatient_url = make_url(pg_url).update_query_dict({"options": f"-c lock_timeout={LOCK_TIMEOUT_MS}"})
    other = make_test_context(tmp_path / "other", impatient_url.render_as_string(hide_password=False))
    try:
        with ctx.db.session() as session:  # node1 claims, and its transaction stays open meanwhile
            held = steps._claim(ctx, session, session.get_one(Step, first), "node1", utcnow())
            assert held is not None
            claim = claim_next(other, second, "node2", frozenset())
            assert claim is not None and claim.step_id == second
    finally:
        other.db.dispose()
    with ctx.db.session() as session:
        assert {s.state for s in session.scalars(select(Step))} == {StepState.RUNNING}


def test_threads_claiming_at_once_claim_each_step_once(ctx: FarmContext) -> None:
    with ctx.db.session() as session:
        tickets = [
            step_id
            for tenant in ("alpha", "beta", "gamma", "delta")
            for step_id in ready_steps(session, tenant, "u", 10)
        ]
    claims: list[list[Claim]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def node(index: int) -> None:
        try:
            start.wait()
            for ticket in itertools.islice(itertools.cycle(tickets), index, THREADS * ROUNDS, THREADS):
                claim = claim_next(ctx, ticket, f"node{index}", frozenset())
                if claim is not None:
                    claims[index].append(claim)
                    continue
                with ctx.db.session() as session:
                    if not session.scalar(select(func.count()).where(Step.state == StepState.READY)):
                        return
            raise AssertionError(f"node{index}: steps still ready after {ROUNDS} tickets")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    claimed = [c.step_id for per_node in claims for c in per_node]
    assert sorted(claimed) == sorted(tickets)  # every step, none twice
    charge = ctx.settings.steps.share_charge_seconds
    with ctx.db.session() as session:
        rows = {r.project: r for r in session.scalars(select(TenantUsage))}
        assert {s.attempt for s in session.scalars(select(Step))} == {1}
    for tenant in ("alpha", "beta", "gamma", "delta"):  # no charge lost to a concurrent one
        assert rows[tenant].pass_seconds >= 10 * charge
        assert rows[tenant].start_seconds >= 9 * charge


def test_advances_making_the_same_queue_at_once_share_it(ctx: FarmContext) -> None:
    """0017: advances of two builds of one tenant may make its queue at once; each gets the one
    row (the second insert does nothing and reads the first), none fails."""
    ids: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def advance_like(index: int) -> None:
        try:
            with ctx.db.session() as session:
                start.wait()
                ids.append(fairshare.queue_ids(session, "nightly", ("alpha", "u"), [""])[""])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=advance_like, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with ctx.db.session() as session:
        assert [q.id for q in session.scalars(select(StepQueue))] == [ids[0]]
    assert ids == [ids[0]] * THREADS
