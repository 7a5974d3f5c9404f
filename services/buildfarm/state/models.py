"""Builds, steps and their outputs.

A step's ``attempt`` and ``lease_owner`` fence its outputs: a node may record a result only
while it holds the lease for the attempt it ran.  A node that died and comes back (or a builder
it orphaned) finds the lease gone and its results are dropped, so nothing is built or published
twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from buildfarm.model import names

# The states and kinds the tables store live in the model layer; importable from here as well.
from buildfarm.model.types import TERMINAL_BUILD_STATES as TERMINAL_BUILD_STATES  # noqa: PLC0414
from buildfarm.model.types import TERMINAL_STEP_STATES as TERMINAL_STEP_STATES  # noqa: PLC0414
from buildfarm.model.types import AptSource, BuildKind, OutputKind
from buildfarm.model.types import BuildState as BuildState  # noqa: PLC0414
from buildfarm.model.types import StepKind as StepKind  # noqa: PLC0414
from buildfarm.model.types import StepState as StepState  # noqa: PLC0414

Clock = Callable[[], dt.datetime]
"""Where the engine reads "now" (aware UTC)."""

_CLOCK: ContextVar[Clock | None] = ContextVar("buildfarm_clock", default=None)


def utcnow() -> dt.datetime:
    """Now, from the wall clock, or from the clock :func:`use_clock` installed in this context."""
    clock = _CLOCK.get()
    return dt.datetime.now(dt.UTC) if clock is None else clock()


@contextmanager
def use_clock(clock: Clock) -> Iterator[None]:
    """Read "now" from ``clock`` in this context (thread, task) until the block ends: the seam
    a simulation's virtual clock goes through (``ops/bench/scheduler.py``); the farm never sets it."""
    token = _CLOCK.set(clock)
    try:
        yield
    finally:
        _CLOCK.reset(token)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC timestamps, also on SQLite (which stores them without a zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


E = TypeVar("E", bound=StrEnum)


class EnumString(TypeDecorator[E]):
    """A closed set kept as its plain string values (no database enum type to migrate), read
    back as the member."""

    impl = String
    cache_ok = True

    def __init__(self, members: type[E], length: int = 20) -> None:
        super().__init__(length)
        self.members = members

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.members(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.members(value)


class AptSourceJSON(TypeDecorator[AptSource]):
    """An :class:`AptSource` kept as its JSON fields (the apt line is only written for apt);
    None is SQL NULL (``IS NULL`` finds builds without staging), not JSON ``null``."""

    impl = JSON(none_as_null=True)
    cache_ok = True

    def process_bind_param(self, value: AptSource | None, dialect: Dialect) -> dict[str, Any] | None:
        return value.to_json() if value is not None else None

    def process_result_value(self, value: dict[str, Any] | None, dialect: Dialect) -> AptSource | None:
        return AptSource.from_json(value) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime(), dict: JSON, list: JSON}


class Build(Base):
    __tablename__ = "builds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(100), index=True)
    branch: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[BuildKind] = mapped_column(EnumString(BuildKind))
    user: Mapped[str] = mapped_column(String(100))
    state: Mapped[BuildState] = mapped_column(EnumString(BuildState), default=BuildState.RUNNING, index=True)
    manifest: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    environment_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    publish_claimed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # while its submit packs trees for steps recorded before their source packages (0018): until
    # when that submit is known to be alive (renewed as it packs); past it the reaper fails the build
    packing_until: Mapped[dt.datetime | None] = mapped_column(default=None)
    # the build's staging repository, which its later steps read (0009: was an apt line)
    staging_source: Mapped[AptSource | None] = mapped_column(AptSourceJSON(), default=None)
    published_url: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # "<schedule>@<slot, ISO 8601 UTC>" of a scheduled build (0006): unique, so however many
    # attempts start one slot (a scheduler killed mid-start, a slow one overtaken), the slot has
    # at most one build.  A natural key, not a schedule_runs id: it stays true in a restored farm.
    schedule_slot: Mapped[str | None] = mapped_column(String(150), default=None, unique=True, index=True)

    steps: Mapped[list[Step]] = relationship(back_populates="build", order_by="Step.id")


READY_ONLY = f"state = '{StepState.READY.value}'"
"""The condition of the partial indexes of ready steps, as SQL (a claim's query repeats it)."""
OPEN_ONLY = f"state NOT IN ({', '.join(repr(state.value) for state in sorted(TERMINAL_STEP_STATES))})"
"""The condition of the PostgreSQL partial index of a build's open steps, as SQL (an advance's
count repeats it: ``engine/advance.py``)."""


class StepQueue(Base):
    """A queue of the scheduler (0017): the ready steps that require ``requires`` of one build
    kind (so one priority class) and one tenant (project, user).

    A step joins its queue when advance makes it ready (``Step.queue_id``) and is in it while
    ready: the queue's steps are the ready steps with its id (a partial index), so nothing is
    counted that could drift.  A claim reads the queues of its pool (one row each, with its
    oldest step: an index probe) instead of every ready step, then the next step of the queue
    it chose (another probe): :func:`buildfarm.engine.steps.claim_next`.  Rows are never
    deleted (a queue with no ready step costs a claim one probe).
    """

    __tablename__ = "step_queues"
    __table_args__ = (UniqueConstraint("requires", "kind", "project", "user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    requires: Mapped[str] = mapped_column(String(500))
    kind: Mapped[BuildKind] = mapped_column(EnumString(BuildKind))
    project: Mapped[str] = mapped_column(String(100))
    user: Mapped[str] = mapped_column(String(100))


def _safe_name_of(context: DefaultExecutionContext) -> str:
    return names.to_safe(context.get_current_parameters()["name"])  # type: ignore[no-untyped-call]


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("build_id", "name"),
        Index("ix_steps_input_key_state", "input_key", "state"),
        Index("ix_steps_state_lease", "state", "lease_expires_at"),
        Index("ix_steps_name_state_build", "name", "state", "build_id"),  # retention (0005)
        Index("ix_steps_source_sha256", "source_sha256"),
        Index("ix_steps_reused_from", "reused_from"),
        Index("ix_steps_resolved_key_state", "resolved_key", "state"),  # 0014
        Index("ix_steps_state_ready_at", "state", "ready_at"),  # the reaper's ready steps (0012)
        # advance: a build's pending steps, and how many are open (0017).  Partial on PostgreSQL
        # (0019): an advance's count reads the open steps alone, from the index (not every step of
        # the build from the table), and a finish, which makes a step terminal, writes no entry.
        # The table's other index on build_id (the unique one) serves every other lookup by build.
        Index("ix_steps_build_open", "build_id", "state", postgresql_where=text(OPEN_ONLY)),
        # The scheduler's queues (0017): a queue's next step and its oldest, one index probe each;
        # partial, so only ready steps are in them (a claim's WHERE spells the state literally).
        Index(
            "ix_steps_queue_oldest",
            "queue_id",
            "ready_at",
            sqlite_where=text(READY_ONLY),
            postgresql_where=text(READY_ONLY),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # no index of its own: ix_steps_build_open and the unique (build_id, name) start with it (0019)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(200))
    origin: Mapped[str] = mapped_column(Text)
    source_sha256: Mapped[str] = mapped_column(String(64))  # the deterministic source tarball
    tree_hash: Mapped[str] = mapped_column(String(64))
    input_key: Mapped[str] = mapped_column(String(64))
    depends_on: Mapped[list] = mapped_column(JSON)  # type: ignore[type-arg]
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[StepState] = mapped_column(EnumString(StepState), default=StepState.PENDING)
    reused_from: Mapped[int | None] = mapped_column(Integer, default=None)  # step whose outputs it took
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    node: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    ready_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # When the reaper last re-sent a ticket for the ready step (0015; None: only the one sent at
    # ``ready_at``).  Re-sending never moves ``ready_at``: a step keeps its age in the queue.
    ticket_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    log_key: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    kind: Mapped[StepKind] = mapped_column(
        EnumString(StepKind), default=StepKind.PACKAGE, server_default=StepKind.PACKAGE.value
    )
    # The attempt in ``attempt`` was taken back while its builder may still run (its lease ran
    # out, or its pod vanished): a READY step so marked may follow that builder again instead of
    # starting a new one.  Cleared when an attempt is claimed or the step is retried (0009: was
    # told by a READY step's ``error`` being set).
    attempt_lost: Mapped[bool] = mapped_column(default=False, server_default=false())
    # image steps: {"dockerfile": str, "builder": str, "build_args": {name: value}}
    image_spec: Mapped[dict | None] = mapped_column(JSON, default=None)  # type: ignore[type-arg]
    # Output identities (0014, ``engine/outputs.py``); NULL on rows from before, which are
    # reused by input key only.  ``own_key``: the step's inputs without its dependencies (submit);
    # ``output_identity``: the normalised digest of what it built (finish, or its original's);
    # ``resolved_key``: ``own_key`` with its dependencies' output identities (release);
    # ``reuse_reason``: why it was reused although its input key was new.
    own_key: Mapped[str | None] = mapped_column(String(64), default=None)
    output_identity: Mapped[str | None] = mapped_column(String(64), default=None)
    resolved_key: Mapped[str | None] = mapped_column(String(64), default=None)
    reuse_reason: Mapped[str | None] = mapped_column(Text, default=None)
    # The node labels it needs, sorted and comma-joined ("arch=arm64,builder=sbuild"; "" for
    # none): a plain string, so the scheduler groups ready steps by it in SQL (0012).
    requires: Mapped[str] = mapped_column(String(500), default="", server_default="")
    # Since when no online node has those labels (the reaper's view; None: one has): the step
    # fails with the reason after ``unschedulable_seconds`` (0012).
    unrunnable_since: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Package steps (0013, manifest ``architectures``): the Debian architecture its packages are
    # built for ("": the building node's own, as every step before 0013 and every image step),
    # whether it also builds the Architecture: all binaries (only a source's primary step), and
    # the environment its input key names when it is not the build's (a cross environment).
    host_arch: Mapped[str] = mapped_column(String(64), default="", server_default="")
    arch_all: Mapped[bool] = mapped_column(default=True, server_default=true())
    environment_id: Mapped[str | None] = mapped_column(String(200), default=None)
    # The dependency layer its attempt started from (0016): "hit:<key>", "miss:<key>", "none",
    # "none:<key>" or "failed" (runners/base.py StepResult.layer); None: no layers (the host
    # runner, a builder pod, a reused step, a step from before 0016).
    layer: Mapped[str | None] = mapped_column(String(80), default=None)
    # The scheduler's queue it waits in while ready (0017, :class:`StepQueue`): set by advance
    # when it makes the step ready; NULL for a step never made ready.
    queue_id: Mapped[int | None] = mapped_column(ForeignKey("step_queues.id"), default=None)
    # Its name as one path segment (:func:`names.to_safe`), written with the row (0020): a claim
    # on PostgreSQL keys the attempt's log in its statement from it (``model/logkeys.py``), with
    # no escaping of its own in SQL.  A step is never renamed.
    safe_name: Mapped[str] = mapped_column(Text, default=_safe_name_of)

    build: Mapped[Build] = relationship(back_populates="steps")
    outputs: Mapped[list[StepOutput]] = relationship(back_populates="step", order_by="StepOutput.filename")

    @property
    def display_state(self) -> str:
        return "reused" if self.reused_from is not None and self.state == StepState.SUCCEEDED else self.state


Index(  # its next step first (critical path, then age): defined here to name the column's order
    "ix_steps_queue_next",
    Step.queue_id,
    Step.priority.desc(),
    Step.ready_at,
    Step.id,
    sqlite_where=text(READY_ONLY),
    postgresql_where=text(READY_ONLY),
)


def _kind_of_output(context: DefaultExecutionContext) -> OutputKind:
    return OutputKind.of_file(context.get_current_parameters()["filename"])  # type: ignore[no-untyped-call]


class StepOutput(Base):
    """A file a step produced, accepted under the lease of ``attempt``; bytes live in the store."""

    __tablename__ = "step_outputs"
    __table_args__ = (UniqueConstraint("step_id", "filename"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(300))  # an image's pushed reference (kind IMAGE)
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # an image's manifest digest
    size: Mapped[int] = mapped_column(BigInteger)
    # 0009: an image was the filename "image:<reference>"; a file's kind follows its suffix
    kind: Mapped[OutputKind] = mapped_column(EnumString(OutputKind), default=_kind_of_output)

    step: Mapped[Step] = relationship(back_populates="outputs")


class Role(StrEnum):
    """Per-project roles, each including the ones before it."""

    VIEWER = "viewer"  # read builds, logs, apt lines
    BUILDER = "builder"  # submit builds, cancel and retry their own
    MAINTAINER = "maintainer"  # cancel or retry any build, submit release builds, see personal builds


ROLE_RANK = {Role.VIEWER: 1, Role.BUILDER: 2, Role.MAINTAINER: 3}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    admin: Mapped[bool] = mapped_column(default=False)
    service: Mapped[bool] = mapped_column(default=False)  # runs schedules; never a person
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Token(Base):
    """An API token: only its sha256 is kept; the secret is shown once, at creation."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    user: Mapped[User] = relationship()


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Grant(Base):
    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("user_id", "project_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))

    user: Mapped[User] = relationship()
    project: Mapped[Project] = relationship()


class ScheduleRun(Base):
    """One slot of a schedule, claimed by the scheduler that starts it (issue 7).

    The unique (schedule, slot) pair is the claim: of any number of schedulers or redelivered
    ticks, exactly one inserts the row, and only that one starts the build.  ``build_id`` is a
    plain number, not a foreign key: retention may expire the build and the run stays listed
    (the build names its slot in ``Build.schedule_slot``, which makes a start idempotent).

    Its state follows from its columns (a baseline, a schedule's first tick, starts nothing):

    * *starting*: neither build nor error; ``attempt`` is under way since ``claimed_at``.  A
      claim older than ``schedule_start_timeout_seconds`` was left by a scheduler that died,
      and is taken over (``attempt`` + 1) by one conditional UPDATE;
    * *started*: ``build_id``;
    * *retrying*: ``error`` of a temporary failure and ``retry_at``, when the next attempt is due;
    * *failed*: ``error`` without ``retry_at``: not tried again; the next slot runs.
    """

    __tablename__ = "schedule_runs"
    __table_args__ = (UniqueConstraint("schedule", "slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule: Mapped[str] = mapped_column(String(100))
    slot: Mapped[dt.datetime]
    claimed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)  # by the attempt under way
    baseline: Mapped[bool] = mapped_column(default=False)
    build_id: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # 0 for a baseline
    retry_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Upload(Base):
    """A source tarball or image context sent through the API (``PUT /sources/<sha256>``).

    Its object has no other row until a build names it (``Step.source_sha256``), and a client
    may never submit one: retention deletes the object of an upload older than
    ``retention_upload_hours`` that no build references, and the row with it (0007).  Each
    upload adds a row (no upsert: two users sending the same bytes never race), so a recent row
    keeps the object of an older one.
    """

    __tablename__ = "uploads"
    __table_args__ = (
        Index("ix_uploads_uploaded_at", "uploaded_at"),  # the sweep picks the old ones
        Index("ix_uploads_sha256", "sha256"),  # does a recent upload name an expiring object
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    uploaded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    user: Mapped[str] = mapped_column(String(100))


class BuildInput(Base):
    """A 3rd-party file a build was made from: an upstream tarball, a .dsc or a file it names.

    Fetched once, checked against its checksum and stored content-addressed; retention keeps
    its object **forever** (like mirrors), so a later build, another branch or a restore never
    downloads it again and still builds after the upstream has gone (0008).  ``origin`` is where
    it came from (its URL, a local path, or ``source:<name>=<version>`` for a .dsc taken from the
    mirrors), so a URL or a pinned source version is fetched only once.
    """

    __tablename__ = "build_inputs"
    __table_args__ = (
        Index("ix_build_inputs_origin", "origin"),  # was this URL / source version fetched before
        Index("ix_build_inputs_sha256", "sha256"),  # does a build input name an expiring object
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(300))
    origin: Mapped[str] = mapped_column(String(2000))
    url: Mapped[str] = mapped_column(String(2000), default="")
    stored_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TaskRun(Base):
    """How one periodic run (``retention`` sweep, ``backup``) ended, written when it ends (0010).

    ``bytes`` is what it freed (retention) or copied (backup); ``detail`` its one-line summary
    or error.  Metrics and the dashboard read the newest row per task.
    """

    __tablename__ = "task_runs"
    __table_args__ = (Index("ix_task_runs_task_finished_at", "task", "finished_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(50))
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ok: Mapped[bool]
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")


class NotificationState(StrEnum):
    PENDING = "pending"  # waits for its next attempt (next_attempt_at)
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after notify_attempts


class Notification(Base):
    """One message about a finished build to one target on one channel (0011).

    ``build_id`` is a plain number, not a foreign key: retention may expire the build and the
    delivery record stays.  A delivery claims its row by moving ``next_attempt_at`` past the
    send timeout (and counting the attempt) in one conditional UPDATE, so two ticks never send
    the same attempt; a scheduler killed mid-send leaves the row to be tried again.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("build_id", "target", "channel"),
        Index("ix_notifications_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    build_id: Mapped[int] = mapped_column(Integer)
    target: Mapped[str] = mapped_column(String(100))
    channel: Mapped[str] = mapped_column(String(20))  # webhook | email
    event: Mapped[str] = mapped_column(String(20))  # finished | failed | fixed
    state: Mapped[str] = mapped_column(String(20), default=NotificationState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class TenantUsage(Base):
    """A tenant's (project, user) virtual time in the fair share of nodes (0012).

    ``pass_seconds`` grows by the node-seconds its steps use divided by its project's weight;
    the scheduler takes next the ready step of the tenant with the least (start-time fair
    queuing: :mod:`buildfarm.engine.fairshare`).  ``start_seconds`` is the virtual start of its
    last step (0015); the farm's virtual time, where a tenant that was idle starts again, is the
    largest of them (the row of the empty tenant ("", "") is the farm's row of before 0015).
    """

    __tablename__ = "tenant_usage"

    project: Mapped[str] = mapped_column(String(100), primary_key=True)
    user: Mapped[str] = mapped_column(String(100), primary_key=True)
    pass_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    start_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Node(Base):
    """A build node as its worker last reported itself (0012): its labels and when it was heard.

    A node unheard for three ``node_heartbeat_seconds`` is offline: no step is routed to it and a
    step only it could run waits with the reason.
    """

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    labels: Mapped[list] = mapped_column(JSON, default=list)  # type: ignore[type-arg]
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
