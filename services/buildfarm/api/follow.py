"""The long poll of ``POST /builds/{id}/changes``: answer a follower when its build moved.

``build submit --wait`` follows a build by asking which of its steps changed; asked every half
second that is a request, a query and an answer each time for a build that mostly did not move.
With ``wait_seconds`` the farm holds the request instead, without a thread (the event loop
sleeps between looks), and answers as soon as a step changed or the build's state is not the one
the follower knows, or when the wait is over.  On SQLite the farm looks again only after some
connection committed (:meth:`buildfarm.state.db.Database.commit_counter`, read every
:data:`PROBE_SECONDS`); elsewhere it asks again every :data:`POLL_SECONDS`, as the follower did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import anyio
import anyio.to_thread

from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm_client.models import BuildView

PROBE_SECONDS = 0.05
"""Between two reads of the commit counter (microseconds each): how late a change is noticed."""
RECHECK_SECONDS = 0.2
"""At least this long between two queries of the build while commits keep coming (other builds,
heartbeats): the follower hears of a change at most this late, the farm queries at most 5 times
a second for it."""
POLL_SECONDS = 0.5
"""Between two queries of the build where no commit counter exists (PostgreSQL)."""


async def changes_after(
    farm: FarmContext,
    build_id: int,
    known: Mapping[int, str],
    state: str | None,
    *,
    wait: float,
    check: Callable[[BuildView], None],
) -> BuildView:
    """:func:`control.build_changes`, held up to ``wait`` seconds while nothing changed; ``check``
    sees the first answer before anything is held (a refusal is not kept waiting)."""
    deadline = time.monotonic() + wait
    with farm.db.commit_counter() as counter:
        seen = counter() if counter is not None else None  # before the query: no commit slips by
        view = await anyio.to_thread.run_sync(control.build_changes, farm, build_id, known)
        check(view)
        while not view.steps and view.state == state and time.monotonic() < deadline:
            await anyio.sleep(min(RECHECK_SECONDS if counter is not None else POLL_SECONDS, _left(deadline)))
            while counter is not None and counter() == seen and time.monotonic() < deadline:
                await anyio.sleep(min(PROBE_SECONDS, _left(deadline)))
            seen = counter() if counter is not None else None
            view = await anyio.to_thread.run_sync(control.build_changes, farm, build_id, known)
        return view


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
