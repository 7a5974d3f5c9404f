"""Tickets the reaper re-sends (issue 16): a step that waited keeps its age in the queue, and a
step that waits long gets a ticket at growing intervals, not one per ``redispatch_seconds``.

Real database (SQLite and PostgreSQL); the dispatcher records the tickets (``farmkit``).  Time
is moved by writing the rows as they would be that much later, never by sleeping.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from buildfarm.engine import reap
from buildfarm.engine.context import FarmContext
from buildfarm.engine.reaper import REDISPATCH_BACKOFF_MAX, ticket_due
from buildfarm.engine.steps import claim_next
from buildfarm.state.models import Step, utcnow

from dispatchkit import ready_steps
from farmkit import dispatcher, make_test_context


@pytest.fixture
def ctx(tmp_path: Path, database_url: str) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, database_url)
    yield context
    context.db.dispose()


def test_a_resent_ticket_keeps_the_steps_place_and_is_not_sent_every_round(ctx: FarmContext) -> None:
    now = utcnow()
    with ctx.db.session() as session:  # one tenant: the step ready longest goes first
        [waited] = ready_steps(session, "proj", "ann", 1, ready_at=now - dt.timedelta(seconds=45))
        [patient] = ready_steps(session, "proj", "ann", 1, ready_at=now - dt.timedelta(seconds=46))
        [recent] = ready_steps(session, "proj", "ann", 1, ready_at=now - dt.timedelta(seconds=10))
        before = session.get_one(Step, patient).ready_at

    assert sorted(reap(ctx).redispatched) == [waited, patient]  # nobody took them for 45 s: new tickets
    assert sorted(dispatcher(ctx).runs) == [(waited, 1), (patient, 1)]
    # the ticket of the recent step takes a step that waited longer: they kept their age
    claim = claim_next(ctx, recent, "node1", frozenset())
    assert claim is not None and claim.step_id == patient

    with ctx.db.session() as session:
        step = session.get_one(Step, waited)
        assert step.ticket_at is not None and step.ticket_at >= now
        assert session.get_one(Step, patient).ready_at == before
        # 31 s later, as the reaper would see it: its pause is now the 45 s it had waited
        session.execute(
            update(Step)
            .where(Step.id == waited)
            .values(
                ready_at=step.ready_at - dt.timedelta(seconds=31),
                ticket_at=step.ticket_at - dt.timedelta(seconds=31),
            )
        )
    assert reap(ctx).redispatched == []
    assert len(dispatcher(ctx).runs) == 2


def test_the_pause_between_tickets_doubles_up_to_a_bound() -> None:
    ready = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    sent: list[float] = []
    last: dt.datetime | None = None
    for second in range(0, 4 * 3600, 5):  # a reaper round every 5 s for 4 hours
        now = ready + dt.timedelta(seconds=second)
        if ticket_due(ready, last, 30.0, now):
            sent.append(second)
            last = now
    assert sent[:6] == [30, 60, 120, 240, 480, 960]
    pauses = {b - a for a, b in itertools.pairwise(sent[5:])}
    assert pauses == {REDISPATCH_BACKOFF_MAX * 30}  # then every 10 min: 28 tickets in 4 hours, not 480
    assert len(sent) == 28
