"""Where a ready step's ticket goes, and why a ready step waits.

Nodes record themselves (name, labels, ``last_seen``) in the nodes table every
``node_heartbeat_seconds``; one unheard for three periods is offline.  A step that requires no
label sends its ticket to the ``builds`` queue, which every node consumes; one that requires
labels that only some online nodes have sends it to the ``node.<name>`` queue of one of them
(the least busy), which only that node consumes, so a node that cannot run it never holds its
ticket (a ticket claims only steps requiring the same labels: :func:`~buildfarm.engine.steps.claim_next`).
No capable node online: the ticket goes to ``builds`` all the same (a node that cannot run it
drops it; the reaper re-sends it after ``redispatch_seconds``, then at growing pauses, to a
capable node once one is back), the step shows ``waiting: no node with arch=arm64``, and the
reaper fails it after ``unschedulable_seconds`` with that reason (:func:`fail_unschedulable`);
a foreign-architecture step placed on a native node of its architecture is cross-built instead
after ``cross_fallback_seconds`` (:mod:`buildfarm.engine.crossfallback`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from buildfarm.engine.context import FarmContext
from buildfarm.model.labels import missing, satisfies
from buildfarm.model.types import BuildState, StepState
from buildfarm.state.models import Build, Node, Step, utcnow

OFFLINE_AFTER_BEATS = 3
"""Heartbeats a node may miss before it counts as offline (a slow database, a busy machine)."""


def record_node(ctx: FarmContext, name: str, labels: list[str]) -> None:
    """Insert or refresh this node's row: its labels and that it is alive now."""
    now = utcnow()
    with ctx.db.session() as session:
        node = session.get(Node, name, with_for_update=True)
        if node is None:
            session.add(Node(name=name, labels=labels, started_at=now, last_seen=now))
        else:
            node.labels, node.last_seen = labels, now


def recorded_labels(ctx: FarmContext) -> dict[str, list[str]]:
    """Every node's labels as its worker last recorded them (online or not)."""
    with ctx.db.session() as session:
        return {name: list(labels) for name, labels in session.execute(select(Node.name, Node.labels))}


def online_nodes(
    session: Session, ctx: FarmContext, now: dt.datetime | None = None
) -> dict[str, frozenset[str]]:
    """The nodes heard recently, with their labels."""
    now = now or utcnow()
    since = now - dt.timedelta(seconds=OFFLINE_AFTER_BEATS * ctx.settings.steps.node_heartbeat_seconds)
    rows = session.execute(select(Node.name, Node.labels).where(Node.last_seen >= since)).all()
    return {name: frozenset(labels) for name, labels in rows}


def node_for(session: Session, ctx: FarmContext, requires: str) -> str | None:
    """The online node a step requiring ``requires`` is sent to: None for the shared queue (it
    requires nothing, every online node can run it, or none can); else the capable node
    running fewest steps (a node's queue holds its tickets until that node takes them)."""
    if not requires:
        return None
    online = online_nodes(session, ctx)
    capable = [n for n, labels in online.items() if satisfies(labels, requires)]
    if not capable or len(capable) == len(online):
        return None
    busy = dict(
        session.execute(
            select(Step.node, func.count())
            .where(Step.state == StepState.RUNNING, Step.node.in_(capable))
            .group_by(Step.node)
        ).all()
    )
    return min(capable, key=lambda n: (busy.get(n, 0), n))


def why_unrunnable(online: dict[str, frozenset[str]], requires: str) -> str | None:
    """``no node with arch=arm64`` when no online node has every label ``requires`` names; else None."""
    if not requires or any(satisfies(labels, requires) for labels in online.values()):
        return None
    if not online:
        return f"no node online (the step requires {requires.replace(',', ', ')})"
    lacking = min((missing(labels, requires) for labels in online.values()), key=len)
    return "no node with " + ", ".join(sorted(lacking))


class Ticketed(Protocol):
    """What a ticket is made of: a ready step's id, attempt and required labels (an ORM step, or
    a row read by a release)."""

    @property
    def id(self) -> int: ...

    @property
    def attempt(self) -> int: ...

    @property
    def requires(self) -> str: ...


def tickets(
    session: Session, ctx: FarmContext, steps: Sequence[Ticketed]
) -> list[tuple[int, int, str | None]]:
    """(step id, attempt of the ticket, node it goes to or None) for ready ``steps``, in order."""
    nodes: dict[str, str | None] = {}
    out = []
    for step in steps:
        if step.requires not in nodes:
            nodes[step.requires] = node_for(session, ctx, step.requires)
        out.append((step.id, step.attempt + 1, nodes[step.requires]))
    return out


def fail_unschedulable(session: Session, ctx: FarmContext, now: dt.datetime) -> list[int]:
    """Mark when a ready step's required labels stopped being offered by any online node; fail
    the ones that waited ``unschedulable_seconds`` so, with the reason.  Returns their builds."""
    waiting = session.scalars(
        select(Step)
        .join(Build, Step.build_id == Build.id)
        .where(Step.state == StepState.READY, Step.requires != "", Build.state == BuildState.RUNNING)
    ).all()
    if not waiting:
        return []
    online = online_nodes(session, ctx, now)
    limit = ctx.settings.steps.unschedulable_seconds
    failed = []
    for step in waiting:
        why = why_unrunnable(online, step.requires)
        if why is None or step.unrunnable_since is None:
            step.unrunnable_since = None if why is None else now
            continue
        waited = (now - step.unrunnable_since).total_seconds()
        if waited < limit:
            continue
        done = session.execute(
            update(Step)
            .where(Step.id == step.id, Step.state == StepState.READY, Step.attempt == step.attempt)
            .values(
                state=StepState.FAILED,
                finished_at=now,
                error=f"not built: {why} (waited {waited:.0f} s, setting unschedulable_seconds)",
            )
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            failed.append(step.build_id)
    return sorted(set(failed))
