"""Choosing what a retention sweep expires: SQL over the build state, costed by what expires.

One pass over the builds table picks those old enough for their class (the ``builds`` rows are
small); for the branches those candidates live on, an index walk from the newest id finds the
newest K, and ``latest`` is recognised by ``finished_at`` (a query only for a candidate that
finished after its branch's newest succeeded build).  Every later query is an ``IN`` over the
candidates' own ids, input keys and objects, or a correlated ``LIMIT 1`` probe per candidate
(SQLite and PostgreSQL both run those as index look-ups; PostgreSQL would turn an ``EXISTS``
into a hash join over every step).  Expired uploads are a range walk of ``ix_uploads_uploaded_at``.
No store is listed: an object is a deletion candidate only because an expired row names it.
What to delete is then decided by :func:`buildfarm.model.retention.plan_sweep`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.orm import Session, aliased

from buildfarm.model.logkeys import step_log_key
from buildfarm.model.retention import (
    EXPIRED_INPUT_KEY,
    LOG_STEP_STATES,
    BuildRecord,
    OutputRecord,
    StepRecord,
    SweepPlan,
    UploadRecord,
    doomed_references,
    expiry_cutoffs,
    plan_sweep,
    unreferenced,
    upload_cutoff,
)
from buildfarm.model.settinggroups import RetentionSettings
from buildfarm.model.types import TERMINAL_BUILD_STATES, BuildKind, BuildState
from buildfarm.state.models import Build, BuildInput, Step, StepOutput, Upload, UTCDateTime

IN_CHUNK = 2000
"""Ids per ``IN (...)`` list: far below SQLite's and PostgreSQL's bind-parameter limits."""
SCAN_CHUNK = 20_000
"""Values per ``IN`` list of a query that scans a table whatever the list (under SQLite's 32 766)."""

_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int = IN_CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Selection:
    """The candidates and their rows, as read from the database for one sweep."""

    builds: list[BuildRecord]
    steps: list[StepRecord]
    outputs: list[OutputRecord]
    log_steps: set[int]
    kept_producers: set[int]
    in_database: Counter[str]  # rows naming each candidate object, in the whole database
    seconds: float
    uploads: list[UploadRecord] = field(default_factory=list)  # expired: older than the upload hours
    plan: SweepPlan = field(default_factory=SweepPlan)
    delete_objects: list[str] = field(default_factory=list)  # candidates no surviving row names

    def make_plan(self, keep_whole: Collection[int] = ()) -> None:
        """(Re)compute the plan, keeping the builds ``keep_whole`` out of it."""
        builds = [b for b in self.builds if b.id not in keep_whole]
        steps = [s for s in self.steps if s.build_id not in keep_whole]
        step_ids = {s.id for s in steps}
        outputs = [o for o in self.outputs if o.step_id in step_ids]
        self.plan = plan_sweep(
            builds,
            steps,
            outputs,
            log_steps=self.log_steps & step_ids,
            kept_producers=self.kept_producers & step_ids,
            log_keys_of=log_keys_of,
            uploads=self.uploads,
        )
        doomed = doomed_references(self.plan, steps, outputs)
        self.delete_objects = unreferenced(self.plan.objects, self.in_database, doomed)


def log_keys_of(step: StepRecord) -> list[str]:
    """Every log a step wrote itself: one per attempt (:func:`step_log_key`)."""
    return [step_log_key(step.build_id, step.name, n) for n in range(1, step.attempt + 1)]


# -- selection ---------------------------------------------------------------------------------


def _expired_by_age(session: Session, policy: RetentionSettings, now: dt.datetime) -> list[BuildRecord]:
    finished = func.coalesce(Build.finished_at, Build.created_at)
    by_class = [
        and_(Build.kind == kind, finished < bindparam(f"cut_{n}", cutoff, type_=UTCDateTime()))
        for n, (kind, cutoff) in enumerate(expiry_cutoffs(policy, now).items())
    ]
    rows = session.execute(
        select(
            Build.id,
            Build.project,
            Build.branch,
            Build.kind,
            Build.user,
            Build.state,
            Build.published_url,
            Build.finished_at,
            Build.staging_source,
        ).where(Build.state.in_(list(TERMINAL_BUILD_STATES)), or_(*by_class))
    )
    return [
        BuildRecord(
            r.id,
            r.project,
            r.branch,
            r.kind,
            r.user,
            r.state,
            published=r.published_url is not None,
            finished_at=r.finished_at,
            staging=r.staging_source is not None,
        )
        for r in rows
    ]


def _newest_on_branch(session: Session, project: str, branch: str, keep_newest: int) -> set[int]:
    """The newest K finished builds of a branch (an index walk from the newest id)."""
    if keep_newest <= 0:
        return set()
    return set(
        session.scalars(
            select(Build.id)
            .where(
                Build.project == project, Build.branch == branch, Build.state.in_(list(TERMINAL_BUILD_STATES))
            )
            .order_by(Build.id.desc())
            .limit(keep_newest)
        )
    )


def _is_latest(session: Session, build: BuildRecord, newest_finished: dt.datetime | None) -> bool:
    """Whether ``latest`` points at this build: the succeeded non-personal build of its branch that
    finished last (``publish`` moves ``latest``, then sets ``finished_at``; ties go to the newer id).

    ``newest_finished`` is when the branch's newest such build (by id) finished: a build that
    finished before it is not latest, which settles almost every expired build without a query.
    """
    if build.state != BuildState.SUCCEEDED or build.kind == BuildKind.PERSONAL or build.finished_at is None:
        return False
    if newest_finished is not None and build.finished_at < newest_finished:
        return False
    finished = bindparam("finished", build.finished_at, type_=UTCDateTime())
    later = session.scalar(
        select(Build.id)
        .where(
            Build.project == build.project,
            Build.branch == build.branch,
            Build.state == BuildState.SUCCEEDED,
            Build.kind != BuildKind.PERSONAL,
            or_(Build.finished_at > finished, and_(Build.finished_at == finished, Build.id > build.id)),
        )
        .limit(1)
    )
    return later is None


def _newest_succeeded_finished(session: Session, project: str, branch: str) -> dt.datetime | None:
    return session.scalar(
        select(Build.finished_at)
        .where(
            Build.project == project,
            Build.branch == branch,
            Build.state == BuildState.SUCCEEDED,
            Build.kind != BuildKind.PERSONAL,
        )
        .order_by(Build.id.desc())
        .limit(1)
    )


def expired_builds(session: Session, policy: RetentionSettings, now: dt.datetime) -> list[BuildRecord]:
    """The finished builds the policy expires, oldest first.

    Besides the policy's own protection, the repository refuses to expire what ``latest``
    serves: such a build is then kept whole (``SweepReport.skipped_builds``).
    """
    old = _expired_by_age(session, policy, now)
    protected: set[int] = set()
    newest_finished: dict[tuple[str, str], dt.datetime | None] = {}
    for project, branch in sorted({(b.project, b.branch) for b in old}):
        protected |= _newest_on_branch(session, project, branch, policy.keep_newest)
        newest_finished[(project, branch)] = _newest_succeeded_finished(session, project, branch)
    return [
        b
        for b in sorted(old, key=lambda b: b.id)
        if b.id not in protected and not _is_latest(session, b, newest_finished[(b.project, b.branch)])
    ]


def _steps_of(session: Session, build_ids: list[int]) -> list[StepRecord]:
    out: list[StepRecord] = []
    columns = (
        Step.id,
        Step.build_id,
        Step.name,
        Step.kind,
        Step.state,
        Step.input_key,
        Step.source_sha256,
        Step.reused_from,
        Step.attempt,
        Step.log_key,
    )
    for chunk in chunks(build_ids):
        rows = session.execute(select(*columns).where(Step.build_id.in_(chunk)))
        out.extend(
            StepRecord(
                id=r.id,
                build_id=r.build_id,
                name=r.name,
                kind=r.kind,
                state=r.state,
                input_key=r.input_key,
                source_sha256=r.source_sha256,
                reused_from=r.reused_from,
                attempt=r.attempt,
                log_key=r.log_key,
            )
            for r in rows
        )
    return out


def _outputs_of(session: Session, step_ids: list[int]) -> list[OutputRecord]:
    out: list[OutputRecord] = []
    columns = (StepOutput.step_id, StepOutput.filename, StepOutput.sha256, StepOutput.size, StepOutput.kind)
    for chunk in chunks(step_ids):
        rows = session.execute(select(*columns).where(StepOutput.step_id.in_(chunk)))
        out.extend(OutputRecord(*row) for row in rows)
    return out


def _last_of_package(session: Session, steps: list[StepRecord]) -> set[int]:
    """Of these steps, those that are the newest success or failure of their package on their branch.

    The newer step is looked up per candidate by a correlated ``LIMIT 1`` subquery in the select
    list: both SQLite and PostgreSQL run it as an index probe per row (PostgreSQL would turn an
    ``EXISTS`` into a hash join over every step).
    """
    newer = aliased(Step)
    newer_build = aliased(Build)
    superseded_by = (
        select(newer.id)
        .join(newer_build, newer_build.id == newer.build_id)
        .where(
            newer.name == Step.name,
            newer.state == Step.state,
            newer.build_id > Step.build_id,
            newer_build.id > Build.id,  # the same bound on both tables: no scan from the oldest
            newer_build.project == Build.project,
            newer_build.branch == Build.branch,
        )
        .limit(1)
        .correlate(Step, Build)
        .scalar_subquery()
    )
    ids = [s.id for s in steps if s.state in LOG_STEP_STATES]
    out: set[int] = set()
    for chunk in chunks(ids):
        rows = session.execute(
            select(Step.id, superseded_by).join(Build, Build.id == Step.build_id).where(Step.id.in_(chunk))
        )
        out.update(step_id for step_id, newer_id in rows if newer_id is None)
    return out


def _reused_by_kept(session: Session, steps: list[StepRecord]) -> set[int]:
    """Of these steps, the producers that a step outside the expiring builds reuses.

    A reuser names its producer in the indexed ``reused_from`` (its input key may differ: a reuse
    by output identity, ``engine/outputs.py``), so every look-up stops early: at the first
    reuser of a producer no expiring step reuses, or one row past the expiring reusers of the
    others.  Its cost follows the expiring steps, not the number of kept reusers.  Steps already
    marked expired cannot have gained reusers.
    """
    expiring_reusers = Counter(s.reused_from for s in steps if s.reused_from is not None)
    producers = [s for s in steps if s.reused_from is None and s.input_key != EXPIRED_INPUT_KEY]
    kept: set[int] = set()
    reuser = aliased(Step)
    some_reuser = (
        select(reuser.id).where(reuser.reused_from == Step.id).limit(1).correlate(Step).scalar_subquery()
    )
    alone = [s.id for s in producers if not expiring_reusers[s.id]]
    for chunk in chunks(alone):
        rows = session.execute(select(Step.id, some_reuser).where(Step.id.in_(chunk)))
        kept.update(step_id for step_id, reuser_id in rows if reuser_id is not None)
    for step in producers:
        if not expiring_reusers[step.id]:
            continue
        some = (
            select(Step.id).where(Step.reused_from == step.id).limit(expiring_reusers[step.id] + 1).subquery()
        )
        if (session.scalar(select(func.count()).select_from(some)) or 0) > expiring_reusers[step.id]:
            kept.add(step.id)
    return kept


def _expired_uploads(session: Session, policy: RetentionSettings, now: dt.datetime) -> list[UploadRecord]:
    cutoff = bindparam("upload_cutoff", upload_cutoff(policy, now), type_=UTCDateTime())
    rows = session.execute(select(Upload.id, Upload.sha256, Upload.size).where(Upload.uploaded_at < cutoff))
    return [UploadRecord(*row) for row in rows]


def _references_in_database(session: Session, shas: list[str]) -> Counter[str]:
    """How many rows (step sources, step outputs, uploads and build inputs) name each of these
    objects.  A build input (an upstream tarball, a .dsc) is kept forever: its row is never
    deleted, so no sweep deletes its object."""
    counts: Counter[str] = Counter()
    # Step sources have no index of their own: big chunks make it one pass over the steps.
    for chunk in chunks(shas, SCAN_CHUNK):
        named_by = (
            (Step.source_sha256, Step),
            (StepOutput.sha256, StepOutput),
            (Upload.sha256, Upload),
            (BuildInput.sha256, BuildInput),
        )
        for column, model in named_by:
            rows = session.execute(
                select(column, func.count()).select_from(model).where(column.in_(chunk)).group_by(column)
            )
            counts.update({sha: count for sha, count in rows})
    return counts


def select_expired(session: Session, policy: RetentionSettings, now: dt.datetime) -> Selection:
    """Everything one sweep deletes, read in one transaction."""
    started = time.monotonic()
    builds = expired_builds(session, policy, now)
    steps = _steps_of(session, [b.id for b in builds])
    outputs = _outputs_of(session, [s.id for s in steps if s.reused_from is None])
    log_steps = _last_of_package(session, steps)
    kept_producers = _reused_by_kept(session, steps)
    uploads = _expired_uploads(session, policy, now)
    candidates = {s.source_sha256 for s in steps} | {o.sha256 for o in outputs if not o.is_image}
    candidates |= {u.sha256 for u in uploads}
    selection = Selection(
        builds,
        steps,
        outputs,
        log_steps,
        kept_producers,
        _references_in_database(session, sorted(candidates)),
        0.0,
        uploads,
    )
    selection.make_plan()
    selection.seconds = time.monotonic() - started
    return selection
