"""Which ready step a free node takes next: priority class, then the fair share of tenants.

A "run step" message is a **ticket**, not an order: the node that takes one claims, in one
transaction, the best ready step of the ticket's pool (the steps that require the same node
labels as the one it names), and only falls back to the step the message named
(:func:`buildfarm.engine.steps.claim_next`).  Every ready step has sent one ticket, so tickets
and ready steps of a pool stay as many; a ticket whose step another ticket took takes another
step, or none (the reaper re-sends a ready step nobody took).  Nothing of the choice lives in a worker's
memory: a node that dies between choosing and claiming chose nothing.

The order, all read from the database at the moment of the claim:

1. the **priority class** of the build's kind (setting ``build_priorities``: release before
   on-demand before nightly before personal);
2. inside a class, the **tenant** (project, user) with the least virtual time
   (``tenant_usage.pass_seconds``): start-time fair queuing (SFQ, a stride scheduler with
   virtual time) over node-seconds, each charged divided by the project's weight (setting
   ``fair_share_weights``);
3. inside a tenant, the build's **critical path** (``Step.priority``, what advance releases
   first), then **age** (the step ready longest, then the lowest id).

The charge: when a step is taken its tenant starts at ``max(own pass, farm virtual time)`` and
moves on by ``fair_share_charge_seconds / weight``; when the step ends the difference to the
node-seconds it really held is added.  The farm's virtual time is the start of the last step
taken: each tenant's row keeps the start of its own last step (``start_seconds``, which never
goes back), and the farm's is the largest of them, read without a lock.  A tenant that was idle
starts there, so it neither owns the farm for what it did not use nor starts behind; every
waiting tenant's pass is passed by the others' in finite time: no one starves.

Claims do not queue on one another: the charge is one ``UPDATE`` of the tenant's own row
(``greatest()`` in SQL, so concurrent charges of one tenant add up), the last statement of the
claiming transaction; claims of different tenants touch no common row.  (Until 0015 every claim
locked the farm's row, so on PostgreSQL all claims of the farm took turns.)  Two claims at once
may read the same farm virtual time: each tenant still starts no earlier than it, which is all
the order needs.

Why this and not what the others do:

* OBS's dispatcher keeps a per-project *load* (recent build time, decaying) and lowers a job's
  priority by it, with hand-set per-project adjustments (``dispatch_adjust``): fair in the long
  run but the decay constant is a knob, and a new project and an idle one look alike;
* Koji assigns tasks to hosts by channel, arch and capacity in priority then FIFO order: no
  share between users, a mass rebuild holds the queue;
* Tekton has no queue of its own: pods wait for the Kubernetes scheduler (fair share comes
  from an add-on such as Kueue's cohorts, outside the pipeline).

The queues: every ready step waits in the queue of its (required labels, build kind, tenant)
(:class:`~buildfarm.state.models.StepQueue`, joined when advance makes it ready), so a claim
reads one row per queue of its pool with that queue's oldest step (:func:`pool_queues`, one
statement that also reads the virtual times) and then the next step of the queue it chose: two
index probes per queue, never a scan of the ready steps, however many are waiting.

SFQ gives OBS's effect (who used more waits more, weighted per project) without a decay knob,
is exact for steps of any length (charged in node-seconds, not in steps), and needs one small
row per tenant, updated in the claiming transaction.  :func:`order_ready` is the same rule as a
pure function: ``build show`` uses it for a step's position (``make bench`` runs the real claim).
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    Float,
    Insert,
    String,
    and_,
    bindparam,
    func,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from buildfarm.model.settings import MAX_PRIORITY, Settings
from buildfarm.model.types import StepState
from buildfarm.state.models import Step, StepQueue, TenantUsage, utcnow

FARM = ("", "")
"""The tenant row that held the farm's virtual time before 0015 (its start still counts)."""

Tenant = tuple[str, str]
"""(project, user)."""

Db = Session | Connection
"""Where the choice and the charges run: an ORM session, or the plain connection of a claim or
a finish (:meth:`buildfarm.state.db.Database.transaction`)."""


def connection_of(db: Db) -> Connection:
    """The connection of ``db``'s transaction (plain statements run on it without the ORM)."""
    return db if isinstance(db, Connection) else db.connection()


def class_of(kind: str, settings: Settings) -> int:
    """The priority class of a build kind: 0 is taken first."""
    return settings.steps.priorities.get(kind, MAX_PRIORITY)


def weight_of(project: str, settings: Settings) -> float:
    return settings.steps.share_weights.get(project, 1.0)


@dataclass(frozen=True)
class ReadyStep:
    """What the choice needs of one ready step."""

    step_id: int
    klass: int
    tenant: Tenant
    priority: int  # critical path: higher first
    ready_at: dt.datetime


IS_READY = Step.state == literal_column(f"'{StepState.READY.value}'")
"""A ready step, spelled as the partial indexes of the queues are (a bound value would not use them)."""

_OLDEST = (
    select(func.min(Step.ready_at))
    .where(Step.queue_id == StepQueue.id, IS_READY)
    .correlate(StepQueue)
    .scalar_subquery()
)
QUEUE_COLUMNS = (
    StepQueue.id,
    StepQueue.kind,
    StepQueue.project,
    StepQueue.user,
    _OLDEST,
    TenantUsage.pass_seconds,
    select(func.max(TenantUsage.start_seconds)).scalar_subquery(),
)
"""What :func:`pool_queues` reads of each queue (:func:`queues_of` reads them back)."""
QUEUES_WITH_USAGE = StepQueue.__table__.outerjoin(
    TenantUsage.__table__, and_(TenantUsage.project == StepQueue.project, TenantUsage.user == StepQueue.user)
)
"""The queues, each with its tenant's row if it has one."""
_POOL_QUEUES = (
    select(*QUEUE_COLUMNS).select_from(QUEUES_WITH_USAGE).where(StepQueue.requires == bindparam("pool"))
)


@dataclass(frozen=True)
class Queue:
    """A queue of ready steps (:class:`~buildfarm.state.models.StepQueue`) that holds some."""

    queue_id: int
    kind: str
    klass: int
    tenant: Tenant
    oldest: dt.datetime  # when its oldest ready step became ready


def pool_queues(session: Db, pool: str, settings: Settings) -> tuple[list[Queue], dict[Tenant, float], float]:
    """The queues of the ready steps that require ``pool`` (the empty ones left out), the
    virtual time of their tenants that have a row, and the farm's: what :func:`passes` reads,
    in one statement of one row per queue (each queue's oldest step: an index probe)."""
    return queues_of(session.execute(_POOL_QUEUES, {"pool": pool}), settings)


def queues_of(
    rows: Iterable[Sequence[Any]], settings: Settings
) -> tuple[list[Queue], dict[Tenant, float], float]:
    """:func:`pool_queues` of rows of :data:`QUEUE_COLUMNS` (a row without a queue: none)."""
    queues: list[Queue] = []
    own: dict[Tenant, float] = {}
    farm = 0.0
    for queue_id, kind, project, user, oldest, own_pass, farm_start in rows:
        if queue_id is None:
            continue
        farm = float(farm_start or 0.0)
        if own_pass is not None:
            own[(project, user)] = own_pass
        if oldest is not None:
            queues.append(Queue(queue_id, kind, class_of(kind, settings), (project, user), oldest))
    return queues, own, farm


def queue_ids(session: Session, kind: str, tenant: Tenant, requires: Iterable[str]) -> dict[str, int]:
    """The queue of each of ``requires`` for ``kind`` and ``tenant`` (made if new: two nodes
    making the same one at once both succeed), by required labels."""
    wanted = set(requires)
    where = (StepQueue.kind == kind, StepQueue.project == tenant[0], StepQueue.user == tenant[1])
    lookup = select(StepQueue.requires, StepQueue.id).where(*where, StepQueue.requires.in_(wanted))
    found: dict[str, int] = dict(session.execute(lookup).all())
    missing = wanted - set(found)
    if missing:
        rows = [
            {"requires": labels, "kind": kind, "project": tenant[0], "user": tenant[1]}
            for labels in sorted(missing)
        ]
        session.execute(_insert_ignoring_existing(session, StepQueue), rows)
        found = dict(session.execute(lookup).all())
    return found


def passes(session: Session, tenants: Iterable[Tenant]) -> tuple[dict[Tenant, float], float]:
    """The virtual time of each tenant (a tenant without a row: none yet) and the farm's (the
    largest start of any tenant's last step: no row is locked)."""
    wanted = set(tenants) - {FARM}
    rows = session.execute(
        select(TenantUsage.project, TenantUsage.user, TenantUsage.pass_seconds, TenantUsage.start_seconds)
    ).all()
    found = {(p, u): value for p, u, value, _start in rows if (p, u) in wanted}
    farm = max((start for *_tenant, _value, start in rows), default=0.0)
    return found, farm


def farm_time(session: Db) -> float:
    """The farm's virtual time: the start of the last step taken (the largest start of a tenant)."""
    return float(session.scalar(select(func.max(TenantUsage.start_seconds))) or 0.0)


def tenant_order(
    candidates: Iterable[tuple[int, Tenant, dt.datetime]], own: Mapping[Tenant, float], farm: float
) -> list[tuple[int, Tenant]]:
    """(class, tenant) pairs best first: class, then virtual time (a tenant behind the farm's
    starts at it), then the tenant whose oldest ready step waits longest."""
    best: dict[tuple[int, Tenant], dt.datetime] = {}
    for klass, tenant, oldest in candidates:
        key = (klass, tenant)
        best[key] = min(best.get(key, oldest), oldest)
    return sorted(best, key=lambda k: (k[0], max(own.get(k[1], farm), farm), best[k], k[1]))


def order_ready(
    steps: Iterable[ReadyStep], own: Mapping[Tenant, float], farm: float, settings: Settings
) -> list[ReadyStep]:
    """The order in which the ready steps would be taken if nothing else became ready and each
    step were charged ``fair_share_charge_seconds``: the scheduler's rule, without a database."""
    charge = settings.steps.share_charge_seconds
    queues: dict[tuple[int, Tenant], list[tuple[int, dt.datetime, int, ReadyStep]]] = {}
    for step in steps:
        queues.setdefault((step.klass, step.tenant), []).append(
            (-step.priority, step.ready_at, step.step_id, step)
        )
    for queue in queues.values():
        queue.sort(key=lambda item: item[:3])
    virtual = {tenant: max(own.get(tenant, farm), farm) for _klass, tenant in queues}
    heap = [(klass, virtual[tenant], queue[0][1], tenant) for (klass, tenant), queue in queues.items()]
    heapq.heapify(heap)
    position = {key: 0 for key in queues}
    out: list[ReadyStep] = []
    while heap:
        klass, start, _oldest, tenant = heapq.heappop(heap)
        queue = queues[(klass, tenant)]
        index = position[(klass, tenant)]
        out.append(queue[index][3])
        position[(klass, tenant)] = index + 1
        # a tenant's virtual time is shared by its classes: it moves on in every one
        virtual[tenant] = max(virtual[tenant], start) + charge / weight_of(tenant[0], settings)
        if index + 1 < len(queue):
            heapq.heappush(heap, (klass, virtual[tenant], queue[index + 1][1], tenant))
    return out


def charge_start(
    session: Db,
    tenant: Tenant,
    settings: Settings,
    now: dt.datetime | None = None,
    *,
    farm: float | None = None,
    has_row: bool = False,
) -> None:
    """Charge ``tenant`` for a step it was just given (the claiming transaction's last statement).

    Its virtual time starts at the farm's if it was behind, and moves on by the default charge
    divided by its weight; that start is its ``start_seconds`` (the farm's virtual time is the
    largest of those).  One UPDATE of the tenant's own row: no other row is locked.

    A claim that already read the farm's virtual time and found the tenant's row in this
    transaction (:func:`passes`) passes ``farm`` and ``has_row``: two reads fewer (rows are
    never deleted; a farm time read a moment earlier is what concurrent claims see anyway).
    """
    now = now or utcnow()
    if farm is None:
        farm = farm_time(session)
    if not has_row:
        _ensure(session, tenant, now)
    connection = connection_of(session)
    connection.execute(
        _CHARGE_START[connection.dialect.name == "sqlite"], charge_start_params(tenant, settings, now, farm)
    )


def charge_start_params(
    tenant: Tenant, settings: Settings, now: dt.datetime, farm: float
) -> dict[str, object]:
    """The parameters of :func:`charge_start`'s statement (and of :func:`charge_start_after`'s)."""
    return {
        "w_project": tenant[0],
        "w_user": tenant[1],
        "farm": farm,
        "step": settings.steps.share_charge_seconds / weight_of(tenant[0], settings),
        "updated_at": now,
    }


_USAGE = TenantUsage.metadata.tables["tenant_usage"]
_OWN_ROW = (_USAGE.c.project == bindparam("w_project"), _USAGE.c.user == bindparam("w_user"))
_FARM = bindparam("farm", type_=Float)
_STEP = bindparam("step", type_=Float)


def _charged(sqlite: bool) -> dict[str, ColumnElement[float]]:
    """The charge's new values of a tenant's row: ``greatest()`` (SQLite: two-argument ``max()``)."""
    greatest = func.max if sqlite else func.greatest
    start = greatest(_USAGE.c.pass_seconds, _FARM)
    return {"start_seconds": greatest(_USAGE.c.start_seconds, start), "pass_seconds": start + _STEP}


_CHARGE_START = {sqlite: update(_USAGE).where(*_OWN_ROW).values(_charged(sqlite)) for sqlite in (True, False)}
"""The charge's UPDATE, built once per dialect."""


def charge_start_after(claimed: CTE) -> ReturningInsert[int]:
    """PostgreSQL: :func:`charge_start` in the claim's own statement, after its UPDATE
    (``claimed``, a CTE that returns the step's row if the lease was won, else nothing): an
    upsert of the tenant's row, which makes a new tenant's row as :func:`_ensure` does (from 0,
    so it starts at the farm's virtual time).  It returns a row if the claim won."""
    return charge_start_upsert(claimed).returning(literal(1)).add_cte(claimed)


def charge_start_upsert(claimed: CTE) -> Insert:
    """:func:`charge_start_after` without its ``RETURNING``: for a statement of more parts, as
    a CTE of its own (``claimed`` is rendered at the statement's top)."""
    new_start = func.greatest(literal(0.0, Float), _FARM)
    add = pg_insert(_USAGE).from_select(
        ["project", "user", "start_seconds", "pass_seconds", "updated_at"],
        select(
            bindparam("w_project", type_=String),
            bindparam("w_user", type_=String),
            new_start,
            new_start + _STEP,
            bindparam("updated_at", type_=_USAGE.c.updated_at.type),
        ).select_from(claimed),
    )
    return add.on_conflict_do_update(
        index_elements=[_USAGE.c.project, _USAGE.c.user],
        set_={**_charged(False), "updated_at": add.excluded.updated_at},
    )


CHARGE_END = (
    update(_USAGE)
    .where(*_OWN_ROW)
    .values(
        pass_seconds=_USAGE.c.pass_seconds + bindparam("correction", type_=Float),
        updated_at=bindparam("updated_at"),
    )
)
"""The charge of a step that ended corrected (:func:`charge_end_params`): built once, a finish
runs it alone or as a part of its one statement."""


def charge_end_params(tenant: Tenant, used_seconds: float | None, settings: Settings) -> dict[str, object]:
    """:data:`CHARGE_END`'s parameters: the step held its node ``used_seconds``, not the default
    (None: it never started, nothing to correct)."""
    correction = (
        0.0
        if used_seconds is None
        else (used_seconds - settings.steps.share_charge_seconds) / weight_of(tenant[0], settings)
    )
    return {"w_project": tenant[0], "w_user": tenant[1], "correction": correction, "updated_at": utcnow()}


def _ensure(session: Db, tenant: Tenant, now: dt.datetime) -> None:
    """A row for this tenant; two nodes adding the same one at once both succeed."""
    if (
        session.scalar(
            select(TenantUsage.project).where(TenantUsage.project == tenant[0], TenantUsage.user == tenant[1])
        )
        is not None
    ):
        return
    row = {
        "project": tenant[0],
        "user": tenant[1],
        "pass_seconds": 0.0,
        "start_seconds": 0.0,
        "updated_at": now,
    }
    session.execute(_insert_ignoring_existing(session, TenantUsage), [row])


def _insert_ignoring_existing(session: Db, table: type[TenantUsage] | type[StepQueue]) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the session's dialect."""
    if connection_of(session).dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()
