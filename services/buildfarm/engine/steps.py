"""Run one step under a lease: claim, heartbeat, build, then record outputs only if still owned.

The lease is the single source of truth for "who builds this step now":

* **claim** is one conditional UPDATE (``ready -> running``, ``attempt + 1``): of any number of
  deliveries of the same message, exactly one wins; the rest return at once;
* **heartbeat** renews the lease every ``heartbeat_seconds``; if the renewal finds the lease gone
  (the step was cancelled, or the node was presumed dead and the step handed to another) the
  build subprocess is killed;
* **finish** is again one conditional UPDATE on (step, attempt, owner, running): a node that lost
  its lease cannot record outputs, so an orphaned builder can never publish.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import string
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    LABEL_STYLE_TABLENAME_PLUS_COL,
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    String,
    bindparam,
    exists,
    func,
    insert,
    select,
    true,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import InstrumentedAttribute, Session

from buildfarm.backends.base import LogWriter, ObjectRef
from buildfarm.engine import builders, fairshare
from buildfarm.engine.advance import ASYNC_COMMIT, TEMPORARY_ERRNOS
from buildfarm.engine.context import FarmContext
from buildfarm.engine.images import bring_into_namespace, dependency_images, image_spec
from buildfarm.engine.outputs import COMPARISON, comparison_line, identity_of_files, identity_of_images
from buildfarm.engine.workdirs import REMOVALS
from buildfarm.model import names
from buildfarm.model.errors import BuildfarmError
from buildfarm.model.images import image_prefix
from buildfarm.model.labels import satisfies
from buildfarm.model.logkeys import STEP_LOG_KEY, step_log_key
from buildfarm.model.types import AptSource, BuildState, OutputKind, StepKind, StepState
from buildfarm.runners.base import ImageSpec, StepJob, StepResult, attempt_dirname
from buildfarm.runners.lost import StepLost
from buildfarm.state.models import Build, Step, StepOutput, StepQueue, utcnow

log = logging.getLogger(__name__)

Output = tuple[str, ObjectRef, OutputKind]
"""What a step made: a file's name (an image's reference), its content address, its kind."""

log_key_for = step_log_key
"""The key of an attempt's log (:mod:`buildfarm.model.logkeys`, its one definition)."""


@dataclass(frozen=True)
class Claim:
    step_id: int
    build_id: int
    name: str
    attempt: int
    owner: str
    source_sha256: str
    log_key: str
    staging_source: AptSource | None
    tenant: fairshare.Tenant  # its build's (project, user): whom the finish charges
    started_at: dt.datetime | None  # the step's start under this lease (the charge's start)
    adopted: bool = False  # the attempt's builder Job outlived its lease and is followed again


def claim_step(ctx: FarmContext, step_id: int, node: str) -> Claim | None:
    """Take the lease of a ready step, or return None if someone else has it or it is done."""
    with ctx.db.session() as session:
        step = session.get(Step, step_id)
        if step is None:
            return None
        return _claim(ctx, session, step, node, utcnow())


@dataclass(frozen=True)
class _Candidate:
    """What a claim reads of a step and its build (a row, not an ORM object: claims are hot)."""

    id: int
    build_id: int
    name: str
    state: StepState
    attempt: int
    lease_owner: str | None
    started_at: dt.datetime | None
    layer: str | None
    attempt_lost: bool
    source_sha256: str
    build_state: BuildState
    staging_source: AptSource | None
    project: str
    user: str

    @classmethod
    def of(cls, step: Step) -> _Candidate:
        build = step.build
        return cls(
            step.id,
            step.build_id,
            step.name,
            step.state,
            step.attempt,
            step.lease_owner,
            step.started_at,
            step.layer,
            step.attempt_lost,
            step.source_sha256,
            build.state,
            build.staging_source,
            build.project,
            build.user,
        )


_CANDIDATE_COLUMNS = (
    Step.id,
    Step.build_id,
    Step.name,
    Step.state,
    Step.attempt,
    Step.lease_owner,
    Step.started_at,
    Step.layer,
    Step.attempt_lost,
    Step.source_sha256,
    Build.state,
    Build.staging_source,
    Build.project,
    Build.user,
)
_STEPS = Step.metadata.tables["steps"]
_LEASE_COLUMNS = (
    "state",
    "attempt",
    "node",
    "lease_owner",
    "lease_expires_at",
    "started_at",
    "finished_at",
    "log_key",
    "error",
    "attempt_lost",
    "layer",
)
_TAKE_LEASE = (
    update(_STEPS)
    .where(
        _STEPS.c.id == bindparam("w_id"),
        _STEPS.c.state == bindparam("w_state"),
        _STEPS.c.attempt == bindparam("w_attempt"),
        _STEPS.c.lease_owner.is_not_distinct_from(bindparam("w_owner")),  # None compares as IS NULL
    )
    .values({name: bindparam(name, type_=_STEPS.c[name].type) for name in _LEASE_COLUMNS})
)
"""The one conditional UPDATE of a claim (built once; the new values are its parameters)."""
_TAKE_AND_CHARGE = fairshare.charge_start_after(_TAKE_LEASE.returning(_STEPS.c.id).cte("taken"))
"""PostgreSQL: a claim of a ready step and its tenant's charge in one statement (a row if won)."""


def _claim(
    ctx: FarmContext,
    session: Session,
    step: Step,
    node: str,
    now: dt.datetime,
    *,
    seen: _Seen | None = None,
) -> Claim | None:
    """The one conditional UPDATE that gives ``node`` the lease, and the tenant's fair-share charge
    (``seen``: what the choice already read of the fair share in this transaction)."""
    if step.build.state != BuildState.RUNNING:
        return None
    # A builder Job of the current attempt that outlived its lease is followed, not built again.
    adopting = builders.can_adopt(ctx, step, now)
    if step.state != StepState.READY and not adopting:
        return None
    return _take(ctx, session.connection(), _Candidate.of(step), node, now, adopting=adopting, seen=seen)


def _take(
    ctx: FarmContext,
    connection: Connection,
    step: _Candidate,
    node: str,
    now: dt.datetime,
    *,
    adopting: bool,
    seen: _Seen | None,
) -> Claim | None:
    """:func:`_claim` of a step already checked: the lease if the step is still as read, the charge."""
    owner = f"{node}/{uuid.uuid4().hex[:12]}"
    attempt = step.attempt if adopting else step.attempt + 1
    key = log_key_for(step.build_id, step.name, attempt)
    tenant = (step.project, step.user)
    lease = {
        "w_id": step.id,
        "w_state": step.state,
        "w_attempt": step.attempt,
        "w_owner": step.lease_owner,
        "state": StepState.RUNNING,
        "attempt": attempt,
        "node": node,
        "lease_owner": owner,
        "lease_expires_at": now + dt.timedelta(seconds=ctx.settings.steps.lease_seconds),
        "started_at": step.started_at if adopting else now,
        "finished_at": None,
        "log_key": key,
        "error": None,
        "attempt_lost": False,
        "layer": step.layer if adopting else None,
    }
    if seen is not None and not adopting and connection.dialect.name == "postgresql":
        # the lease and the charge in one statement: one round trip of a claim fewer
        charge = fairshare.charge_start_params(tenant, ctx.settings, now, seen.farm)
        if connection.execute(_TAKE_AND_CHARGE, lease | charge).first() is None:
            return None
    elif connection.execute(_TAKE_LEASE, lease).rowcount != 1:
        return None
    elif not adopting:
        if seen is None:
            fairshare.charge_start(connection, tenant, ctx.settings, now)
        else:
            fairshare.charge_start(
                connection, tenant, ctx.settings, now, farm=seen.farm, has_row=tenant in seen.tenants
            )
    return Claim(
        step.id,
        step.build_id,
        step.name,
        attempt,
        owner,
        step.source_sha256,
        key,
        step.staging_source,
        tenant,
        step.started_at if adopting else now,
        adopted=adopting,
    )


@dataclass(frozen=True)
class _Seen:
    """What choosing read of the fair share: the farm's virtual time, the tenants that have a row."""

    farm: float
    tenants: frozenset[fairshare.Tenant]


CHOICES_PER_TICKET = 8
"""(class, tenant) queues a ticket tries before it falls back to the step it names: each try
finds a step another node took meanwhile only under contention, so this bounds a claim's work."""

_NAMED_STEP = _STEPS.alias("named")
_NAMED_COLUMNS = (
    _NAMED_STEP.c.requires,
    # read as its string (StepState compares equal to it): the read repeats it on the row of
    # each queue of the pool, and made a StepState of each
    type_coerce(_NAMED_STEP.c.state, String).label("state"),
    _NAMED_STEP.c.attempt,
    _NAMED_STEP.c.attempt_lost,
)


_NAMED_AND_POOL = (
    select(*_NAMED_COLUMNS, *fairshare.QUEUE_COLUMNS)
    .select_from(
        _NAMED_STEP.outerjoin(fairshare.QUEUES_WITH_USAGE, StepQueue.requires == _NAMED_STEP.c.requires)
    )
    .where(_NAMED_STEP.c.id == bindparam("id"))
)
"""A claim's first read: the step its ticket names, joined to the queues of its pool (the
steps requiring the same labels: :func:`fairshare.pool_queues`'s row of each, or one row
without a queue when the pool has none); no row if the step is gone."""


def claim_next(ctx: FarmContext, step_id: int, node: str, labels: frozenset[str]) -> Claim | None:
    """Use a "run step" ticket: claim the best ready step of the ticket's pool (see
    :mod:`buildfarm.engine.fairshare`), else the step the ticket names, else nothing.

    A ticket's pool is the steps requiring the same labels as the one it names: tickets are
    routed by those labels (:mod:`buildfarm.engine.routing`), so each pool keeps as many tickets
    on capable nodes as it has ready steps, and a node that cannot run a pool takes none of it.

    The named step is claimed first when its builder Job outlived its lease (it is followed
    again, wherever the order would put it).  On PostgreSQL the chosen row is locked ``FOR
    UPDATE SKIP LOCKED``, so nodes choosing at once take different steps instead of queueing on
    one; the lease is still the conditional UPDATE.  The choice reads rows, not ORM objects; a
    step that may be adopted is loaded whole.

    On SQLite the choice and the claim are one transaction (its BEGIN and COMMIT cost no round
    trip).  On PostgreSQL there is none around them (:func:`_claim_next_pg`): each (class,
    tenant) tried chooses, locks, leases and charges in one statement, atomic alone; a claim is
    two round trips where the transaction made it five (BEGIN, the read, the choice, the lease
    with the charge, COMMIT).
    """
    now = utcnow()
    if ctx.db.engine.dialect.name == "postgresql":
        return _claim_next_pg(ctx, step_id, node, labels, now)
    with ctx.db.transaction() as connection:
        rows = connection.execute(_NAMED_AND_POOL, {"id": step_id}).all()
        named = rows[0] if rows else None
        if named is not None and _may_adopt(named.state, named.attempt, named.attempt_lost):
            with ctx.db.session_on(connection) as session:
                step = session.get_one(Step, step_id)
                if builders.can_adopt(ctx, step, now):
                    return _claim(ctx, session, step, node, now)
        pool = named.requires if named is not None else ""
        if not satisfies(labels, pool):
            return None  # a ticket of steps this node cannot run: a capable node has their others
        queues = (
            fairshare.queues_of((row[len(_NAMED_COLUMNS) :] for row in rows), ctx.settings)
            if named is not None
            else fairshare.pool_queues(connection, pool, ctx.settings)
        )
        for candidate, seen in _best_ready(ctx, connection, queues):
            if _may_adopt(candidate.state, candidate.attempt, candidate.attempt_lost):
                with ctx.db.session_on(connection) as session:
                    claim = _claim(ctx, session, session.get_one(Step, candidate.id), node, now, seen=seen)
            else:
                claim = _take(ctx, connection, candidate, node, now, adopting=False, seen=seen)
            if claim is not None:
                return claim
        if named is not None and named.state == StepState.READY:  # its own step, when no chosen one was won
            with ctx.db.session_on(connection) as session:
                return _claim(ctx, session, session.get_one(Step, step_id), node, now)
    return None


def _claim_next_pg(
    ctx: FarmContext, step_id: int, node: str, labels: frozenset[str], now: dt.datetime
) -> Claim | None:
    """:func:`claim_next` on PostgreSQL, without a transaction: the read of the named step and
    its pool's queues, then for each (class, tenant) in the fair-share order one statement
    (:data:`_CHOOSE_AND_TAKE`) that chooses its next step, locks it ``FOR UPDATE SKIP LOCKED``,
    takes its lease if it is still ready and charges the tenant.  A statement is atomic alone,
    so a crash leaves the step ready or claimed and charged, as the transaction did.  The rare
    paths that need the step as an ORM object (adoption, the named step as a last resort) run
    as on SQLite, in a transaction of their own.

    The claim commits without waiting for its WAL to reach the disk (``ASYNC_COMMIT`` in the
    statement: ``set_config(..., true)`` is ``SET LOCAL``, with no round trip of its own).  Safe
    by the lease: a crash of the server loses only the last commits, in commit order (a later
    commit that waits flushes all the WAL before it), so a lost claim leaves the database as if
    it had not been made: the step is ready at its old attempt and the next ticket claims it
    again, while the builder of the lost claim holds no lease: its heartbeat finds none and
    stops it, its finish is refused (fencing), what it stored is content-addressed, and its log
    lines end up in the log of the attempt that claims the step again under the same number.  A
    finish does the same, for a reason of its own (finish_step)."""
    with ctx.db.statements() as connection:
        rows = connection.execute(_NAMED_AND_POOL, {"id": step_id}).all()
        named = rows[0] if rows else None
        if named is not None and _may_adopt(named.state, named.attempt, named.attempt_lost):
            adopted = _claim_in_transaction(ctx, step_id, node, now, adopt_only=True)
            if adopted is not None:
                return adopted
        pool = named.requires if named is not None else ""
        if not satisfies(labels, pool):
            return None  # a ticket of steps this node cannot run: a capable node has their others
        queues, own, farm = (
            fairshare.queues_of((row[len(_NAMED_COLUMNS) :] for row in rows), ctx.settings)
            if named is not None
            else fairshare.pool_queues(connection, pool, ctx.settings)
        )
        seen = _Seen(farm, frozenset(own))
        order = fairshare.tenant_order(((q.klass, q.tenant, q.oldest) for q in queues), own, farm)
        for klass, tenant in order[:CHOICES_PER_TICKET]:
            ids = [q.queue_id for q in queues if q.tenant == tenant and q.klass == klass]
            owner = f"{node}/{uuid.uuid4().hex[:12]}"
            params = fairshare.charge_start_params(tenant, ctx.settings, now, farm) | {
                "queue": ids[0] if len(ids) == 1 else ids,
                "node": node,
                "owner": owner,
                "now": now,
                "expires": now + dt.timedelta(seconds=ctx.settings.steps.lease_seconds),
            }
            row = connection.execute(_CHOOSE_AND_TAKE[len(ids) == 1], params).first()
            if row is None:
                continue  # none ready in its queues (or all locked by nodes choosing now)
            if row.log_key is not None:  # taken: its attempt is the chosen one's next
                return Claim(
                    row.id,
                    row.build_id,
                    row.name,
                    row.chosen_attempt + 1,
                    owner,
                    row.source_sha256,
                    row.log_key,
                    row.staging_source,
                    tenant,
                    now,
                )
            if _may_adopt(StepState.READY, row.chosen_attempt, row.attempt_lost):  # chosen, not taken
                claim = _claim_in_transaction(ctx, row.id, node, now, seen=seen)
                if claim is not None:
                    return claim
    if named is not None and named.state == StepState.READY:  # its own step, when no chosen one was won
        return _claim_in_transaction(ctx, step_id, node, now)
    return None


def _claim_in_transaction(
    ctx: FarmContext,
    step_id: int,
    node: str,
    now: dt.datetime,
    *,
    adopt_only: bool = False,
    seen: _Seen | None = None,
) -> Claim | None:
    """:func:`_claim` of one step loaded as an ORM object, in a transaction of its own
    (``adopt_only``: only if its builder Job is to be followed)."""
    with ctx.db.transaction() as connection, ctx.db.session_on(connection) as session:
        step = session.get(Step, step_id)
        if step is None or (adopt_only and not builders.can_adopt(ctx, step, now)):
            return None
        return _claim(ctx, session, step, node, now, seen=seen)


def _may_adopt(state: StepState, attempt: int, attempt_lost: bool) -> bool:
    """Whether :func:`builders.can_adopt` could say yes (else its runner need not be asked)."""
    return attempt >= 1 and (state == StepState.RUNNING or attempt_lost)


def _next_step(
    one: bool, locking: bool, columns: tuple[InstrumentedAttribute[Any], ...] = _CANDIDATE_COLUMNS
) -> Select[*tuple[Any, ...]]:
    """The next step of one queue (``one``) or several of one (class, tenant) (critical path,
    then age), with its build, locked ``FOR UPDATE SKIP LOCKED`` if ``locking``: one probe of
    the queues' partial index when there is one queue.  ``columns``: what is read of them."""
    query = (
        select(*columns)
        .join(Build, Step.build_id == Build.id)
        .where(
            Step.queue_id == bindparam("queue")
            if one
            else Step.queue_id.in_(bindparam("queue", expanding=True)),
            fairshare.IS_READY,
            Build.state == BuildState.RUNNING,
        )
        .order_by(Step.priority.desc(), Step.ready_at, Step.id)
        .limit(1)
    )
    return query.with_for_update(of=Step, skip_locked=True) if locking else query


_NEXT_STEP = {one: _next_step(one, locking=False) for one in (True, False)}
"""SQLite's choice, built once: a claim only binds the queue ids."""


def log_key_sql(**columns: ColumnElement[Any]) -> ColumnElement[str]:
    """PostgreSQL: :func:`log_key_for` computed by the server (in the statement that takes a
    lease), from :data:`STEP_LOG_KEY` itself: its text as it is, each of its fields the column
    of that name (``build_id``, ``safe_name``: the step's stored :func:`names.to_safe`,
    ``attempt``)."""
    parts: list[ColumnElement[Any] | str] = []
    for text, field, _spec, _conversion in string.Formatter().parse(STEP_LOG_KEY):
        parts += [text] if text else []
        parts += [columns[field]] if field is not None else []
    return func.concat(*parts)


_CHOSEN_COLUMNS = (
    Step.id,
    Step.build_id,
    Step.name,
    Step.safe_name,
    Step.attempt,
    Step.attempt_lost,
    Step.source_sha256,
    Build.staging_source,
)
"""What :func:`_choose_and_take` reads of the chosen step and its build: what the lease and
the claim use, no more (a column the statement carries costs the client its description at
every execution)."""


def _choose_and_take(one: bool) -> Select[*tuple[Any, ...]]:
    """PostgreSQL: a claim's choice in one (class, tenant) and its lease, in one statement
    (:func:`_claim_next_pg`): the next step of the queue(s) ``queue`` locked ``FOR UPDATE SKIP
    LOCKED`` (:func:`_next_step`), its lease taken as :data:`_TAKE_LEASE` takes it (attempt + 1,
    the log key computed by the server) unless its builder Job may be adopted, the tenant's
    charge (:func:`fairshare.charge_start_upsert`), and an asynchronous commit
    (:data:`ASYNC_COMMIT`).  One row if a step was chosen: its ``log_key`` is null if it was not
    taken (it may be adopted: ``attempt_lost``); no row if the queues had none to offer."""
    chosen = (
        _next_step(one, locking=True, columns=_CHOSEN_COLUMNS)
        .set_label_style(LABEL_STYLE_TABLENAME_PLUS_COL)
        .cte("chosen")
    )
    attempt = chosen.c.steps_attempt + 1
    taken = (
        update(_STEPS)
        .where(
            _STEPS.c.id == chosen.c.steps_id,
            _STEPS.c.state == StepState.READY,
            ~(chosen.c.steps_attempt_lost & (chosen.c.steps_attempt >= 1)),  # may be adopted: not here
        )
        .values(
            state=StepState.RUNNING,
            attempt=attempt,
            node=bindparam("node", type_=String),
            lease_owner=bindparam("owner", type_=String),
            lease_expires_at=bindparam("expires", type_=_STEPS.c.lease_expires_at.type),
            started_at=bindparam("now", type_=_STEPS.c.started_at.type),
            finished_at=None,
            log_key=log_key_sql(
                build_id=chosen.c.steps_build_id, safe_name=chosen.c.steps_safe_name, attempt=attempt
            ),
            error=None,
            attempt_lost=False,
            layer=None,
        )
        .returning(_STEPS.c.id, _STEPS.c.log_key)
        .cte("taken")
    )
    charged = fairshare.charge_start_upsert(taken).cte("charged")
    return (
        select(
            chosen.c.steps_id.label("id"),
            chosen.c.steps_build_id.label("build_id"),
            chosen.c.steps_name.label("name"),
            chosen.c.steps_attempt.label("chosen_attempt"),
            chosen.c.steps_attempt_lost.label("attempt_lost"),
            chosen.c.steps_source_sha256.label("source_sha256"),
            chosen.c.builds_staging_source.label("staging_source"),
            taken.c.log_key,
            ASYNC_COMMIT,
        )
        .select_from(chosen.outerjoin(taken, taken.c.id == chosen.c.steps_id))
        .add_cte(charged)
    )


_CHOOSE_AND_TAKE = {one: _choose_and_take(one) for one in (True, False)}
"""Built once (one queue, or several of one (class, tenant)): a claim binds its parameters."""


def _best_ready(
    ctx: FarmContext,
    connection: Connection,
    pool_queues: tuple[list[fairshare.Queue], dict[fairshare.Tenant, float], float],
) -> Iterator[tuple[_Candidate, _Seen]]:
    """Ready steps of a pool, best first (one per (class, tenant), locked on PostgreSQL), and
    what the choice read of the fair share.

    From the pool's queues as :func:`fairshare.pool_queues` reads them (one row per queue, read
    with the named step), the next step of each (class, tenant) taken in turn: the cost grows
    with the tenants, not with the steps."""
    queues, own, farm = pool_queues
    if not queues:
        return
    seen = _Seen(farm, frozenset(own))
    order = fairshare.tenant_order(((q.klass, q.tenant, q.oldest) for q in queues), own, farm)
    for klass, tenant in order[:CHOICES_PER_TICKET]:
        ids = [q.queue_id for q in queues if q.tenant == tenant and q.klass == klass]
        one = len(ids) == 1
        row = connection.execute(_NEXT_STEP[one], {"queue": ids[0] if one else ids}).first()
        if row is not None:
            yield _Candidate(*row), seen


def warm_up(ctx: FarmContext) -> None:
    """Run a step's statements once when the node starts, matching no row (no step has id 0):
    each is compiled at its first use in a process, and the first steps a node built paid that
    (milliseconds of CPU each) inside a build; a farm pays it once, at start.  The reads of a
    claim, the target and the comparison everywhere; on SQLite the lease and the finish too (their
    conditional UPDATEs change nothing)."""
    none: dict[str, Any] = {"id": 0, "queue": 0, "w_id": 0, "w_state": StepState.READY, "w_attempt": 0}
    none |= {"w_owner": None, "finished_at": None, "output_identity": None} | dict.fromkeys(_LEASE_COLUMNS)
    with ctx.db.statements() as connection:
        connection.execute(_NAMED_AND_POOL, none).all()
        connection.execute(_TARGET, none).all()
        connection.execute(COMPARISON, none).all()
        if connection.dialect.name == "sqlite":
            connection.execute(_NEXT_STEP[True], none).all()
            connection.execute(_TAKE_LEASE, none)
            connection.execute(_FINISH, none | {"w_owner": "", "state": StepState.FAILED})


def _still_owned(claim: Claim) -> list[object]:
    return [
        Step.id == claim.step_id,
        Step.attempt == claim.attempt,
        Step.lease_owner == claim.owner,
        Step.state == StepState.RUNNING,
    ]


def renew_lease(ctx: FarmContext, claim: Claim) -> bool:
    with ctx.db.session() as session:
        result = session.execute(
            update(Step)
            .where(*_still_owned(claim))  # type: ignore[arg-type]
            .values(lease_expires_at=utcnow() + dt.timedelta(seconds=ctx.settings.steps.lease_seconds))
        )
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


_FINISH = (
    update(_STEPS)
    .where(
        _STEPS.c.id == bindparam("w_id"),
        _STEPS.c.attempt == bindparam("w_attempt"),
        _STEPS.c.lease_owner == bindparam("w_owner"),
        _STEPS.c.state == StepState.RUNNING,
    )
    .values(
        state=bindparam("state"),
        finished_at=bindparam("finished_at"),
        lease_owner=None,
        lease_expires_at=None,
        error=bindparam("error"),
        output_identity=bindparam("output_identity"),
    )
)
"""A finish's conditional UPDATE (:func:`_still_owned`)."""
_OUTPUTS = StepOutput.metadata.tables["step_outputs"]
_ADD_OUTPUT = insert(_OUTPUTS)
_OUTPUT_COLUMNS = ("filename", "sha256", "size", "kind")


def _finish_in_one_statement() -> Select[int, str]:
    """PostgreSQL: the whole finish as one statement (its parts as data-modifying CTEs): the
    conditional UPDATE, the charge corrected and the outputs added only if it matched (their
    columns bound as arrays, so the statement is the same for any number of outputs and is
    prepared once); it returns 1 if the lease still held, else 0, and commits asynchronously
    (:data:`ASYNC_COMMIT`; why: :func:`finish_step`)."""
    finished = _FINISH.returning(_STEPS.c.id, _STEPS.c.attempt).cte("finished")
    won = exists(select(finished.c.id))
    charged = fairshare.CHARGE_END.where(won).cte("charged")
    files = (
        func.unnest(
            bindparam("filenames", type_=ARRAY(String)),
            bindparam("sha256s", type_=ARRAY(String)),
            bindparam("sizes", type_=ARRAY(BigInteger)),
            bindparam("kinds", type_=ARRAY(String)),
        )
        .table_valued(*_OUTPUT_COLUMNS)
        .render_derived(name="output")
    )
    added = (
        insert(_OUTPUTS)
        .from_select(
            ["step_id", "attempt", *_OUTPUT_COLUMNS],
            select(finished.c.id, finished.c.attempt, *(files.c[name] for name in _OUTPUT_COLUMNS))
            .select_from(finished)
            .join(files, true()),
        )
        .cte("added")
    )
    return select(func.count(), ASYNC_COMMIT).select_from(finished).add_cte(charged, added)


_FINISH_PG = _finish_in_one_statement()


def finish_step(
    ctx: FarmContext, claim: Claim, outputs: list[Output], error: str | None, identity: str | None = None
) -> bool:
    """Record the result if this attempt still holds the lease; return whether it was accepted.
    ``identity`` is the outputs' normalised digest (``engine/outputs.py``), None if unknown.

    The conditional UPDATE, the tenant's charge corrected to the node-seconds the step really
    held (since :attr:`Claim.started_at`), its outputs: on PostgreSQL one statement
    (:func:`_finish_in_one_statement`) that commits alone, one round trip in all (with a
    transaction it was five: BEGIN, three statements, COMMIT).

    On PostgreSQL its commit does not wait for the disk either (as a claim's, see
    :func:`claim_next`): that flush was most of a finish's time (0.3 ms on an idle disk, 2-4 ms on
    a busy one).  Safe by the lease: a crash of the server loses only the last commits, in
    commit order, and any later commit that waits (a lease renewal, the advance that releases
    the step's dependents or publishes its build) flushes all the WAL before its own, so nothing
    decided on a finish outlives it.  A lost finish leaves the step as the claim left it:
    running under this attempt's lease, which nobody renews any more (the builder is done), so
    the reaper expires it after ``lease_seconds`` and the step is built again on a new attempt,
    in a log of its own (this attempt's log keeps its last line, "succeeded" or "failed").  The
    outputs stored by the lost attempt are content-addressed objects: the new attempt stores or
    finds them again; their rows were lost with the finish.  The price: a crash of the server
    rebuilds the steps finished in its last moments (the WAL writer flushes every
    ``wal_writer_delay``, 200 ms by default)."""
    finished = utcnow()
    used = max(0.0, (finished - claim.started_at).total_seconds()) if claim.started_at is not None else None
    params: dict[str, Any] = {
        "w_id": claim.step_id,
        "w_attempt": claim.attempt,
        "w_owner": claim.owner,
        "state": StepState.FAILED if error else StepState.SUCCEEDED,
        "finished_at": finished,
        "error": error,
        "output_identity": None if error else identity,
    }
    charge = fairshare.charge_end_params(claim.tenant, used, ctx.settings)
    with ctx.db.statements() as connection:
        if connection.dialect.name == "postgresql":
            params |= charge | {
                "filenames": [filename for filename, _ref, _kind in outputs],
                "sha256s": [ref.sha256 for _name, ref, _kind in outputs],
                "sizes": [ref.size for _name, ref, _kind in outputs],
                "kinds": [kind.value for _name, _ref, kind in outputs],
            }
            won, _async = connection.execute(_FINISH_PG, params).one()
            return bool(won == 1)
        if connection.execute(_FINISH, params).rowcount != 1:
            return False
        connection.execute(fairshare.CHARGE_END, charge)
        if outputs:
            connection.execute(
                _ADD_OUTPUT,
                [
                    {
                        "step_id": claim.step_id,
                        "attempt": claim.attempt,
                        "filename": filename,
                        "sha256": ref.sha256,
                        "size": ref.size,
                        "kind": kind,
                    }
                    for filename, ref, kind in outputs
                ],
            )
    return True


class _Heartbeat(threading.Thread):
    def __init__(self, ctx: FarmContext, claim: Claim, cancel: threading.Event) -> None:
        super().__init__(name=f"heartbeat-{claim.step_id}", daemon=True)
        self.ctx, self.claim, self.cancel = ctx, claim, cancel
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.ctx.settings.steps.heartbeat_seconds):
            try:
                owned = renew_lease(self.ctx, self.claim)
            except Exception:  # a database hiccup: try again next beat; the lease has slack
                log.exception("heartbeat of step %s failed", self.claim.step_id)
                continue
            if not owned:
                self.lost = True
                self.cancel.set()
                return


KILLED_ATTEMPTS_MAX = 3
"""A step whose builder the system kills (``SIGKILL`` from the OOM killer, an operator's signal)
is built again on a new attempt up to this attempt number; then it fails with the reason."""


class _Killed(Exception):
    """The builder died of a signal the farm did not send (see :attr:`StepResult.killed_by`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _write(writer: LogWriter, line: str, step_id: int) -> None:
    """A line of the farm's own in the step log; a store that refuses it loses only that line."""
    try:
        writer.write_line(line)
    except (BuildfarmError, OSError) as exc:
        log.warning("step %s: a log line was not stored: %s", step_id, exc)


def _close(writer: LogWriter, step_id: int) -> None:
    try:
        writer.close()
    except (BuildfarmError, OSError) as exc:
        log.warning("step %s: the end of its log was not stored: %s", step_id, exc)


def run_step(ctx: FarmContext, step_id: int, node: str, labels: frozenset[str] = frozenset()) -> str:
    """Use a "run step" ticket on this node (whose labels are ``labels``): claim the best ready
    step it may run (:func:`claim_next`) and build it. Returns what happened, for the task's
    result and logs."""
    claim = claim_next(ctx, step_id, node, labels)
    if claim is None:
        return "not-claimed"
    try:
        writer = ctx.store.open_log(claim.log_key)
    except (BuildfarmError, OSError) as exc:  # the store is down: fail the attempt now, not at lease end
        finish_step(ctx, claim, [], f"the step's log could not be opened: {exc}")
        ctx.dispatcher.advance(claim.build_id)
        return "failed"
    try:
        return _run_claimed(ctx, claim, writer, node)
    finally:  # on every path: a full log store must not leak the writer's file or connection
        _close(writer, claim.step_id)


def _run_claimed(ctx: FarmContext, claim: Claim, writer: LogWriter, node: str) -> str:
    cancel = threading.Event()
    heartbeat = _Heartbeat(ctx, claim, cancel)
    heartbeat.start()
    workdir = Path(ctx.work_root) / attempt_dirname(claim.build_id, names.to_safe(claim.name), claim.attempt)
    lost: str | None = None
    try:
        if claim.adopted:
            writer.write_line(f"buildfarm: node {node} adopts attempt {claim.attempt}: its Job still exists")
        outcome = _build(ctx, claim, writer, workdir, cancel)
    except StepLost:  # the builder pod vanished: not a failure; the step goes back to the queue
        lost, outcome = "its builder pod vanished", (None, [], None)
    except _Killed as killed:
        lost, outcome = killed.reason, (None, [], None)
    except (BuildfarmError, OSError) as exc:  # the log store refused a line: the attempt fails with it
        outcome = (f"the step's log could not be written: {exc}", [], None)
    finally:
        heartbeat.stopped.set()
        heartbeat.join()
    try:
        return _settle(ctx, claim, writer, node, outcome, lease_lost=heartbeat.lost, lost=lost)
    finally:
        REMOVALS.start(workdir)


def _settle(
    ctx: FarmContext,
    claim: Claim,
    writer: LogWriter,
    node: str,
    outcome: tuple[str | None, list[Output], str | None],
    *,
    lease_lost: bool,
    lost: str | None,
) -> str:
    """Record how the attempt ended (unless its lease was lost), log it and advance its build."""
    if lease_lost:
        _write(
            writer,
            f"buildfarm: lease of attempt {claim.attempt} lost; this attempt's outputs are discarded",
            claim.step_id,
        )
        return "lease-lost"
    if lost is not None:
        _write(writer, f"buildfarm: attempt {claim.attempt}: {lost}; the step is built again", claim.step_id)
        builders.requeue_lost(ctx, claim.step_id, claim.attempt, claim.owner, lost)
        return "pod-lost" if lost.startswith("its builder pod") else "killed"
    error, outputs, identity = outcome
    accepted = finish_step(ctx, claim, outputs, error, identity)
    _write(
        writer,
        f"buildfarm: step {claim.name} attempt {claim.attempt} on {node}: "
        + ("failed: " + error if error else "succeeded")
        + ("" if accepted else " (not recorded: lease lost)"),
        claim.step_id,
    )
    compared = comparison_line(ctx, claim.step_id) if accepted and error is None else None
    if compared is not None:
        _write(writer, compared, claim.step_id)
    ctx.dispatcher.advance(claim.build_id)
    if not accepted:
        return "lease-lost"
    return "failed" if error else "succeeded"


def _build(
    ctx: FarmContext, claim: Claim, writer: LogWriter, workdir: Path, cancel: threading.Event
) -> tuple[str | None, list[Output], str | None]:
    """Fetch the source, run the runner, store outputs. Returns (error or None, outputs, their
    output identity or None)."""
    REMOVALS.wait(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    tarball = workdir / "source.tar.gz"
    try:
        target = _step_target(ctx, claim)
        runner = ctx.runner_for(target.kind)
        writer.write_line(
            f"buildfarm: step {claim.name} attempt {claim.attempt} starts ({runner.name} runner)"
        )
        if target.image is not None and target.dependency_images:
            bring_into_namespace(
                ctx.parts.registry(),
                target.image.destination.rsplit("/", 1)[0],
                target.dependency_images,
                writer.write_line,
            )
        ctx.store.fetch(claim.source_sha256, tarball)
        staging = [claim.staging_source] if claim.staging_source else []
        extra = staging + ctx.repo.mirror_sources()  # mirrors after the build's own packages
        job = StepJob(
            build_id=claim.build_id,
            step_name=claim.name,
            attempt=claim.attempt,
            source_tarball=tarball,
            workdir=workdir / "build",
            extra_sources=extra,
            log=writer.write_line,
            cancel=cancel,
            timeout_seconds=ctx.settings.steps.timeout_seconds,
            source_sha256=claim.source_sha256,
            kind=target.kind,
            image=target.image,
            node=target.node,
            project=target.project,
            branch=target.branch,
            environment_id=target.environment_id,
            requires=target.requires,
            host_arch=target.host_arch,
            arch_all=target.arch_all,
        )
        job.workdir.mkdir()
        result: StepResult = runner.run(job)
        if result.layer is not None:
            _record_layer(ctx, claim, result.layer)
        if not result.ok and result.killed_by and claim.attempt < KILLED_ATTEMPTS_MAX:
            raise _Killed(f"its builder was killed by {result.killed_by}, not by the farm")
        if not result.ok and result.killed_by:
            return (
                f"{result.error or 'build failed'} (attempt {claim.attempt} of {KILLED_ATTEMPTS_MAX})",
                [],
                None,
            )
        if not result.ok:
            return result.error or "build failed", [], None
        if target.image is not None:
            if not result.images:
                return "the image runner reported success but pushed no image", [], None
            images: list[Output] = [
                (
                    image.reference,
                    ObjectRef(image.digest.removeprefix("sha256:"), image.size),
                    OutputKind.IMAGE,
                )
                for image in result.images
            ]
            return None, images, identity_of_images([image.digest for image in result.images])
        stored = _store_outputs(ctx, result.outputs, writer, cancel)
        return None, stored, identity_of_files(result.outputs)
    except BuildfarmError as exc:
        return str(exc), [], None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}", [], None


def _record_layer(ctx: FarmContext, claim: Claim, layer: str) -> None:
    """The attempt's dependency layer outcome on its step (only while it holds the lease)."""
    with ctx.db.session() as session:
        session.execute(
            update(Step).where(*_still_owned(claim)).values(layer=layer)  # type: ignore[arg-type]
        )


STORE_THREADS = 4
"""A step's outputs are stored this many at once: a file store's two fsyncs of each (a .deb, its
.buildinfo and .changes: 6 fsyncs, 6-20 ms a step on this disk) wait beside each other, an S3
store's uploads too."""
_STORING: list[ThreadPoolExecutor] = []
_STORING_LOCK = threading.Lock()


def _storing() -> ThreadPoolExecutor:
    """The node's threads that store outputs (made at the first step that has two)."""
    with _STORING_LOCK:
        if not _STORING:
            _STORING.append(ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="store"))
        return _STORING[0]


def _store_outputs(
    ctx: FarmContext, outputs: list[Path], writer: LogWriter, cancel: threading.Event
) -> list[Output]:
    """Store a step's outputs, several at once; a full or read-only artifact store is waited
    out, not a failure.

    The built packages are fine: failing the step would throw away the build for a disk an
    operator is about to clear. The attempt keeps its lease (the heartbeat runs) and waits with
    the publish path's pauses and bound (``repository_retry_*``, ``repository_give_up_seconds``);
    past the bound, or on any other fault, the OSError fails the attempt with its reason.
    """
    settings = ctx.settings
    deadline = time.monotonic() + settings.repository.give_up_seconds
    pause = settings.repository.retry_min_seconds

    def put(path: Path) -> Output:
        return path.name, ctx.store.put_file(path), OutputKind.of_file(path.name)

    while True:
        try:
            if len(outputs) < 2:
                return [put(path) for path in outputs]
            return list(_storing().map(put, outputs))  # each put's fsyncs wait beside the others'
        except OSError as exc:
            if exc.errno not in TEMPORARY_ERRNOS or time.monotonic() + pause > deadline:
                raise
            writer.write_line(
                f"buildfarm: storing outputs waits {pause:g} s: the artifact store refused: "
                f"{exc.strerror or exc}"
            )
            if cancel.wait(pause):
                raise
            pause = min(pause * 2, settings.repository.retry_max_seconds)


@dataclass(frozen=True)
class _Target:
    """What the step row says about what to build: its kind, image spec and whereabouts."""

    kind: StepKind
    image: ImageSpec | None
    node: str | None
    project: str
    branch: str
    dependency_images: list[tuple[str, str]]  # (name, pushed reference) of image steps it needs
    environment_id: str = ""  # the step's package environment (its input key names it)
    host_arch: str = ""  # the architecture to build for ("": the node's own)
    arch_all: bool = True
    requires: str = ""  # the node labels it needs (a builder pod's nodeSelector)


_TARGET = (
    select(
        Step.kind,
        Step.node,
        Build.project,
        Build.branch,
        Step.environment_id,
        Build.environment_id.label("build_environment_id"),
        Step.host_arch,
        Step.arch_all,
        Step.requires,
    )
    .join(Build, Step.build_id == Build.id)
    .where(Step.id == bindparam("id"))
)
"""A package step's target: one row (a node reads it at every step; loading the step and its
build as ORM objects cost several times more)."""


def _step_target(ctx: FarmContext, claim: Claim) -> _Target:
    with ctx.db.statements() as connection:
        row = connection.execute(_TARGET, {"id": claim.step_id}).one()
    if row.kind != StepKind.IMAGE:
        return _Target(
            row.kind,
            None,
            row.node,
            row.project,
            row.branch,
            [],
            row.environment_id or row.build_environment_id,
            row.host_arch,
            row.arch_all,
            row.requires,
        )
    with ctx.db.session() as session:
        step = session.get_one(Step, claim.step_id)
        build = step.build
        prefix = image_prefix(ctx.settings.registry.url, build.project, build.branch, build.id)
        spec = image_spec(step.name, step.image_spec or {}, prefix)
        deps = dependency_images(session, step)
        return _Target(step.kind, spec, step.node, build.project, build.branch, deps, requires=step.requires)
