"""The long poll of ``POST /builds/{id}/changes``: answer a follower when its build moved.

``build submit --wait`` follows a build by asking which of its steps changed; asked every half
second that is a request, a query and an answer each time for a build that mostly did not move.
With ``wait_seconds`` the farm holds the request instead, without a thread (the event loop
sleeps between looks), and answers as soon as a step changed or the build's state is not the one
the follower knows, or when the wait is over; steps that moved wait for a batch of
:data:`BATCH_SECONDS`.  On SQLite the farm looks again only after some connection committed
(:meth:`buildfarm.state.db.Database.commit_probe`, read every :data:`PROBE_SECONDS`): the build's
state at once (one row, on the probe's own connection: its end is told within a probe), its
steps at most every :data:`RECHECK_SECONDS` until one moved, then once more when the batch is
told; elsewhere it asks again every :data:`POLL_SECONDS`, as the follower did (the state alone
while a batch waits).  A follower asking ``state_only`` (it shows only the build's end) is held
until the state moves, its steps read only for the answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import anyio
import anyio.to_thread
from sqlalchemy import bindparam, select
from sqlalchemy.dialects import sqlite

from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.state.models import Build
from buildfarm_client.models import BuildView

PROBE_SECONDS = 0.05
"""Between two reads of the commit counter (microseconds each): how late a change is noticed."""
RECHECK_SECONDS = 0.2
"""At least this long between two queries of the build's steps while commits keep coming (other
builds, heartbeats): the follower hears of a step's change at most this late, the farm queries
at most 5 times a second for it.  The build's state is read at each commit (microseconds): its
end is told within :data:`PROBE_SECONDS`, not up to this late (0.1 s on average at every
``--wait`` before)."""
POLL_SECONDS = 0.5
"""Between two queries of the build where no commit counter exists (PostgreSQL)."""
BATCH_SECONDS = 1.0
"""Steps that moved are told at most this often (an answer is a request of the follower's and a
response of the farm's, a few milliseconds each): a build's steps move many times a second on
two nodes.  The build's state changing (its end) is told at once."""

_STATE_SQL = str(select(Build.state).where(Build.id == bindparam("id")).compile(dialect=sqlite.dialect()))
"""The build's state, on the commit probe's connection (SQLite's ``?`` parameter)."""


async def changes_after(
    farm: FarmContext,
    build_id: int,
    known: Mapping[int, str],
    state: str | None,
    *,
    wait: float,
    check: Callable[[BuildView], None],
    state_only: bool = False,
) -> BuildView:
    """:func:`control.build_changes`, held up to ``wait`` seconds while nothing changed (with
    ``state_only``: while the build's state did not, whatever its steps did: only the state is
    read meanwhile, not the steps); ``check`` sees the first answer before anything is held (a
    refusal is not kept waiting)."""
    began = time.monotonic()
    deadline = began + wait
    with farm.db.commit_probe() as probe:
        seen = probe.version() if probe is not None else None  # before the query: no commit slips by
        view = await anyio.to_thread.run_sync(control.build_changes, farm, build_id, known)
        queried = time.monotonic()
        check(view)
        stale = False  # something may have moved since the view in hand was read
        while view.state == state and time.monotonic() < deadline:
            # Moved steps are told once BATCH_SECONDS are over, the build's state at once: while
            # steps wait to be told (or are not to be), only the state is read, and the steps
            # once, when the answer goes.
            holding = state_only or bool(view.steps)
            until = deadline if state_only or not view.steps else min(deadline, began + BATCH_SECONDS)
            if time.monotonic() >= until:
                if stale:
                    view = await anyio.to_thread.run_sync(control.build_changes, farm, build_id, known)
                break
            if probe is None:
                await anyio.sleep(min(POLL_SECONDS, _left(until)))
                if holding and await anyio.to_thread.run_sync(_state, farm, build_id) == view.state:
                    stale = True
                    continue
            else:
                await anyio.sleep(min(PROBE_SECONDS, _left(until)))
                version = probe.version()
                if version == seen:
                    continue  # nothing committed: the view in hand is still the build's
                if probe.value(_STATE_SQL, (build_id,)) == view.state:
                    if holding:
                        seen, stale = version, True
                        continue
                    if time.monotonic() - queried < RECHECK_SECONDS:
                        continue  # the steps are asked again once RECHECK_SECONDS are over
                seen = version
            view = await anyio.to_thread.run_sync(control.build_changes, farm, build_id, known)
            queried, stale = time.monotonic(), False
        return view


def _state(farm: FarmContext, build_id: int) -> str | None:
    """The build's state alone (where no commit probe reads it)."""
    with farm.db.statements() as connection:
        state = connection.execute(select(Build.state).where(Build.id == build_id)).scalar()
    return None if state is None else str(state)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
