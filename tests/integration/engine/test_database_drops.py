"""PostgreSQL ending a dispatch connection (issue 16): a restart, a failover or an idle timeout
costs the farm nothing it cannot recover.

The pool checks a connection it hands out by its socket, not by a round trip
(:func:`buildfarm.state.db._ping_when_suspect`): a connection the server ended while it sat in
the pool is seen and replaced before a claim uses it; one ended in the middle of a claim fails
that claim with a temporary error (the worker postpones the ticket, the reaper sends it again),
and leaves the step ready for the next claim.  Real PostgreSQL; the server ends the session with
``pg_terminate_backend(pid, timeout)``, which returns once the backend is gone: nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, select, text

from buildfarm.engine.context import FarmContext
from buildfarm.engine.steps import claim_next
from buildfarm.model.errors import ServiceUnavailableError
from buildfarm.model.types import StepState
from buildfarm.state.db import _ping_when_suspect
from buildfarm.state.models import Step

from dispatchkit import ready_steps
from farmkit import make_test_context
from helpers import scratch_database

pytestmark = pytest.mark.integration

GONE_WITHIN_MS = 30_000
"""How long ``pg_terminate_backend`` waits for the backend to exit (it returns as soon as it has)."""


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    with scratch_database(postgres_url, "drops") as url:
        yield url


@pytest.fixture
def admin(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def ctx(tmp_path: Path, pg_url: str) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, pg_url)
    yield context
    context.db.dispose()


def _terminate(admin: Engine, pid: int) -> None:
    with admin.connect() as connection:
        gone = connection.scalar(
            text("SELECT pg_terminate_backend(:pid, :timeout)"), {"pid": pid, "timeout": GONE_WITHIN_MS}
        )
    assert gone is True


def _backend_pid(connection: Connection) -> int:
    pid = connection.scalar(text("SELECT pg_backend_pid()"))
    assert isinstance(pid, int)
    return pid


def test_the_check_of_a_pooled_connection_pings_only_one_the_server_ended(
    ctx: FarmContext, admin: Engine
) -> None:
    pings: list[Any] = []

    def ping(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return False

    check = _ping_when_suspect(ping, Exception)
    with ctx.db.engine.connect() as connection:
        pid = _backend_pid(connection)
        connection.commit()
        driver = connection.connection.driver_connection
        assert check(driver) is True and pings == []  # alive: no round trip
        _terminate(admin, pid)
        assert check(driver) is False and pings == [driver]  # ended: the real ping decides
        connection.invalidate()


def test_a_connection_ended_while_pooled_is_replaced_before_the_claim_uses_it(
    ctx: FarmContext, admin: Engine
) -> None:
    with ctx.db.session() as session:
        first, second = ready_steps(session, "alpha", "ann", 2)
    assert claim_next(ctx, first, "node1", frozenset()) is not None
    with ctx.db.statements() as connection:  # a claim's pool's one connection, back in it afterwards
        pooled = _backend_pid(connection)
    _terminate(admin, pooled)
    claim = claim_next(ctx, second, "node1", frozenset())
    assert claim is not None and claim.step_id == second
    with ctx.db.statements() as connection:
        assert _backend_pid(connection) != pooled


def test_a_connection_ended_in_the_middle_of_a_claim_fails_it_and_leaves_the_step_ready(
    ctx: FarmContext, admin: Engine
) -> None:
    with ctx.db.session() as session:
        [step_id] = ready_steps(session, "alpha", "ann", 1)
    ended: list[int] = []

    def end_before_the_lease(conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if "UPDATE steps" in statement and not ended:  # the statement that takes the lease
            ended.append(conn.connection.driver_connection.info.backend_pid)  # type: ignore[union-attr]
            _terminate(admin, ended[0])

    event.listen(ctx.db.statements_engine, "before_cursor_execute", end_before_the_lease)
    try:
        with pytest.raises(ServiceUnavailableError, match="terminating connection"):
            claim_next(ctx, step_id, "node1", frozenset())
    finally:
        event.remove(ctx.db.statements_engine, "before_cursor_execute", end_before_the_lease)
    assert ended
    with ctx.db.session() as session:
        step = session.get_one(Step, step_id)
        assert (step.state, step.attempt, step.lease_owner) == (StepState.READY, 0, None)
    claim = claim_next(ctx, step_id, "node2", frozenset())
    assert claim is not None and (claim.step_id, claim.attempt) == (step_id, 1)
    with ctx.db.session() as session:
        assert session.scalar(select(Step.lease_owner).where(Step.id == step_id)) == claim.owner
