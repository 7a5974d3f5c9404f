"""Fair share (issue 16): inside a priority class, the tenant that used the farm least goes next.

Real parts: the farm's Celery configuration and dispatcher on a private Redis, the database
(SQLite and PostgreSQL, where the choice locks ``FOR UPDATE SKIP LOCKED``), and a real Celery
worker taking one ticket at a time through the farm's own claim.  Tenant A (alpha/ann) queues 6
steps of a nightly build, then tenant B (beta/bob) 2 of another nightly build: in arrival order
(the old FIFO) B waited for all of A; now B's steps alternate with A's first ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from buildfarm.dispatch.celery_app import BUILD_QUEUE
from buildfarm.engine.context import FarmContext
from buildfarm.state.models import Build, Step

from dispatchkit import celery_dispatcher, ctx, probe_worker, ready_steps, wait_taken

pytestmark = pytest.mark.integration

__all__ = ["ctx"]  # the fixture, imported for this module's tests


def test_a_second_tenant_is_served_before_the_first_ones_queue_is_done(
    ctx: FarmContext, redis_flush: str, database_url: str, tmp_path: Path
) -> None:
    with ctx.db.session() as session:
        first = ready_steps(session, "alpha", "ann", 6)
        second = ready_steps(session, "beta", "bob", 2)
    dispatcher = celery_dispatcher(tmp_path, redis_flush)
    for step_id in first + second:  # the tickets in arrival order, one class
        dispatcher.run_step(step_id, 1, "nightly")

    with probe_worker(
        tmp_path, "node1", BUILD_QUEUE, redis_url=redis_flush, database_url=database_url
    ) as record:
        order = wait_taken(record, 8, "the worker to use every ticket")

    claimed = [step_id for step_id, _node in order]
    assert sorted(claimed) == sorted(first + second)  # each step once, none lost
    with ctx.db.session() as session:
        tenant = {s.id: s.build.project for s in session.query(Step).join(Build)}
    assert [tenant[s] for s in claimed] == [
        "alpha",
        "beta",
        "alpha",
        "beta",
        "alpha",
        "alpha",
        "alpha",
        "alpha",
    ]
