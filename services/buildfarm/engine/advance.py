"""Move a build forward: release steps whose dependencies are done, reuse, stage, publish.

``advance_build`` is idempotent and safe to run any number of times, concurrently too: it works
under a lock on the build's row, releases only ``pending`` steps, and only one caller wins the
``running -> publishing`` transition.  Every Celery task that changes a step ends by asking for
it, and the reaper asks for it for builds that look stuck.

The repository (Pulp) and the artifact store (S3) can be down when a build needs them: to stage
the packages later steps build against, or to publish.  Neither ends half done: a staging that
failed puts its steps back to ``pending`` (no step runs without the packages it needs), a
publication that failed leaves ``latest`` where it was (Pulp's own publish is all or nothing and
idempotent, so trying again completes it).  While the outage is *temporary* the build keeps its
state, ``error`` says what it waits for in one line, and the reaper's next ``advance`` tries
again: staging at every reaper period, publishing after a pause that grows with the outage
(settings ``repository_retry_min_seconds`` to ``repository_retry_max_seconds``).  After
``repository_give_up_seconds`` without success, or at once for a permanent error, the build
fails with that line; ``retry`` then tries again.  A full or read-only disk under the local
repository, the artifact directory or the work directory is such a temporary outage too; any other
exception (permission denied, a bug) fails the build at once with its reason
(:func:`repository_fault`).  No fault leaves the publish claim taken or the build without a word.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    Connection,
    Select,
    Text,
    Update,
    bindparam,
    cast,
    func,
    literal_column,
    null,
    select,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.orm import Session, defer

from buildfarm.backends.base import (
    BuildInputKeeper,
    BuildRef,
    HoldsPackages,
    LocalObjects,
    PackageFile,
    StoredPackage,
)
from buildfarm.engine import bundlefiles, fairshare, gcpause, routing
from buildfarm.engine.context import FarmContext
from buildfarm.engine.outputs import ORIGINAL_COLUMNS, Original, adopt_outputs, find_equivalent
from buildfarm.engine.submit import moves_latest
from buildfarm.engine.workdirs import REMOVALS
from buildfarm.model.debsource import file_sha256
from buildfarm.model.errors import BuildfarmError, PermanentError, TemporaryError
from buildfarm.model.sources import unpack_tree
from buildfarm.model.types import (
    TERMINAL_BUILD_STATES,
    TERMINAL_STEP_STATES,
    BuildState,
    OutputKind,
    StepKind,
    StepState,
)
from buildfarm.state.models import Build, BuildInput, Step, StepOutput, utcnow

log = logging.getLogger(__name__)

PUBLISH_CLAIM_SECONDS = 600
"""A publisher silent this long is taken as dead and another may publish (idempotently)."""
ERROR_CHARS = 500


def build_ref(build: Build) -> BuildRef:
    return BuildRef(build.id, build.project, build.branch, build.kind, build.user)


ASYNC_COMMIT = func.set_config("synchronous_commit", "off", True)
"""PostgreSQL: a column that makes the commit of its transaction not wait for the disk (``SET
LOCAL``, without a round trip of its own); why that is safe: :func:`advance_build`,
:func:`buildfarm.engine.steps.claim_next`, :func:`buildfarm.engine.steps.finish_step`."""
_LOCK_BUILD = {
    dialect: select(Build, *((ASYNC_COMMIT,) if dialect == "postgresql" else ()))
    .where(Build.id == bindparam("id"))
    .options(defer(Build.manifest))
    .with_for_update()
    for dialect in ("postgresql", "sqlite")
}
"""The build locked, its manifest not read; on PostgreSQL its transaction set to commit
asynchronously in the same statement (:func:`advance_build`)."""


def _lock_build(session: Session, build_id: int) -> Build | None:
    dialect = session.get_bind().dialect.name
    return session.scalars(_LOCK_BUILD[dialect], {"id": build_id}).one_or_none()


# A step without an input key has its source package still being made by its submit
# (``engine/submit.py``): it waits, neither released nor skipped, until the submit keys it.
_IS_PENDING = Step.state == literal_column(f"'{StepState.PENDING.value}'")
"""A pending step, the state written into the statement: PostgreSQL's generic plan of a prepared
statement (psycopg prepares one run often) can use the partial index of open steps
(``ix_steps_build_open``, 0019) only if the query's state implies its condition, and a bound
state does not."""
_PENDING = select(Step.depends_on).where(
    Step.build_id == bindparam("build"), _IS_PENDING, Step.input_key != ""
)
_STATES_OF = select(Step.name, Step.state).where(
    Step.build_id == bindparam("build"), Step.name.in_(bindparam("names", expanding=True))
)
_UNFINISHED = (StepState.PENDING, StepState.READY, StepState.RUNNING)


def _may_release(session: Session | Connection, build_id: int, pending: list[list[str]]) -> bool:
    """Whether a pending step of the build can change now, the pending steps' dependencies being
    ``pending``: their states read as rows (a light query per :data:`LOOKUP_CHUNK` names), so
    the advance that follows most finishes loads no step."""
    wanted = sorted({name for deps in pending for name in deps})
    states: dict[str, StepState] = {}
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        chunk = {"build": build_id, "names": wanted[start : start + LOOKUP_CHUNK]}
        states.update(session.execute(_STATES_OF, chunk).all())
    return _any_releasable(pending, states)


def _releasable_of(steps: list[OpenStep]) -> bool | None:
    """Whether a pending step of the build can change now (None: the build has no pending step),
    told from :func:`open_steps`' rows (the pending steps and their dependencies), no query."""
    pending = [s.depends_on for s in steps if s.state == StepState.PENDING and s.input_key != ""]
    return _any_releasable(pending, {s.name: s.state for s in steps}) if pending else None


def _any_releasable(pending: list[list[str]], states: Mapping[str, StepState]) -> bool:
    """Whether one of the pending steps whose dependencies are ``pending`` can change, their
    states being ``states`` (by name).  A pending step changes when its dependencies all
    succeeded, or one failed, was cancelled or skipped; else it waits."""
    for deps in pending:
        seen = [states.get(name) for name in deps]
        if all(state == StepState.SUCCEEDED for state in seen):
            return True  # it becomes ready or is reused
        if any(state not in _UNFINISHED for state in seen if state != StepState.SUCCEEDED):
            return True  # a dependency failed, was cancelled or skipped: it is skipped
    return False


LOOKUP_CHUNK = 500
"""Keys or ids in one ``IN (...)`` lookup: a release of thousands of steps costs a few queries."""


def find_reusable(session: Session, input_key: str) -> Original | None:
    """A step anywhere in the farm that built this input key successfully (the original, not a reuse)."""
    return find_reusables(session, [input_key]).get(input_key)


def find_reusables(session: Session, input_keys: Collection[str]) -> dict[str, Original]:
    """:func:`find_reusable` of every key at once (the newest original success of each), in one
    query per :data:`LOOKUP_CHUNK` keys, read as rows; keys never built are absent."""
    found: dict[str, Original] = {}
    keys = sorted(set(input_keys))
    for start in range(0, len(keys), LOOKUP_CHUNK):
        rows = session.execute(
            select(*ORIGINAL_COLUMNS)
            .where(
                Step.input_key.in_(keys[start : start + LOOKUP_CHUNK]),
                Step.state == StepState.SUCCEEDED,
                Step.reused_from.is_(None),
            )
            .order_by(Step.finished_at.desc(), Step.id.desc())
        )
        for row in rows:
            found.setdefault(row.input_key, Original(*row))  # the newest comes first
    return found


class StoredOutput(NamedTuple):
    """What a reuse checks of an original's output: that the store still holds it."""

    step_id: int
    kind: OutputKind
    filename: str
    sha256: str


def _outputs_of(session: Session, step_ids: Collection[int]) -> dict[int, list[StoredOutput]]:
    """The outputs of each of ``step_ids`` (every id present, maybe with none), chunked queries."""
    ids = sorted(set(step_ids))
    found: dict[int, list[StoredOutput]] = {step_id: [] for step_id in ids}
    columns = (StepOutput.step_id, StepOutput.kind, StepOutput.filename, StepOutput.sha256)
    for start in range(0, len(ids), LOOKUP_CHUNK):
        chunk = ids[start : start + LOOKUP_CHUNK]
        for row in session.execute(select(*columns).where(StepOutput.step_id.in_(chunk))):
            found[row.step_id].append(StoredOutput(*row))
    return found


def _outputs_stored(
    session: Session,
    step: Original,
    has: Callable[[str], bool],
    known: Mapping[int, list[StoredOutput]] | None = None,
) -> bool:
    """Whether every stored output of ``step`` (not its images: the registry holds those) is still
    in the artifact store.  A store that cannot answer now counts as holding them: publishing then
    meets the outage and says so, as it would have without this check.  ``known``: outputs
    loaded already, by step id (:func:`_outputs_of`); a step not in it is looked up."""
    outputs = known.get(step.id) if known is not None else None
    if outputs is None:
        outputs = _outputs_of(session, [step.id])[step.id]
    for output in outputs:
        if output.kind == OutputKind.IMAGE:
            continue
        try:
            if not has(output.sha256):
                log.warning(
                    "step %s (input key %s) is not reused: its output %s (%s) is gone from the store; "
                    "building it again",
                    step.id,
                    step.input_key[:12],
                    output.filename,
                    output.sha256[:12],
                )
                return False
        except BuildfarmError:
            return True
    return True


def producing_step_id(step: Step) -> int:
    return step.reused_from if step.reused_from is not None else step.id


@dataclass
class OpenStep:
    """A step a release reads or changes, read as a row: a no-change re-run releases thousands,
    and loading, tracking and flushing as many ORM objects was most of its advance.  The steps
    it changes are written back in a few executemany statements (:func:`_write_released`)."""

    id: int
    name: str
    state: StepState
    depends_on: list[str]
    input_key: str
    own_key: str | None
    output_identity: str | None
    resolved_key: str | None
    reuse_reason: str | None
    reused_from: int | None
    node: str | None
    log_key: str | None
    error: str | None
    requires: str
    attempt: int  # a ready one's ticket: its next attempt (routing.tickets)
    priority: int  # a ready one's place among the tickets sent


_OPEN_COLUMNS = tuple(getattr(Step, f.name) for f in fields(OpenStep))


def _release(
    session: Session,
    build: Build,
    has: Callable[[str], bool] | None = None,
    steps: list[OpenStep] | None = None,
) -> list[OpenStep]:
    """Resolve pending steps; return the ones that became ready, as the rows read (the build's
    lock keeps them as read: a ticket needs no step loaded). Loops until nothing changes.

    A step whose input key was built before reuses that build, as does one whose dependencies
    built what a success of its own key was built against (``engine/outputs.py``), unless ``has``
    (the artifact store's) says one of its outputs is gone (a lost bucket, a store swapped): then
    it is built again, rather than failing every build that would reuse it at publish time.
    ``steps``: :func:`open_steps` of the build, if read already in this transaction."""
    now = utcnow()
    steps = open_steps(session, build.id) if steps is None else steps
    pending = {s.id for s in steps if s.state == StepState.PENDING}
    by_name = {s.name: s for s in steps}
    # Every pending step's earlier success, and what it built, in a few queries, not one per
    # step: a no-change re-run of thousands of packages reuses them all in one release.
    reusable = find_reusables(session, [s.input_key for s in steps if s.id in pending])
    stored = _outputs_of(session, [s.id for s in reusable.values()]) if has is not None else {}
    with session.no_autoflush:  # the loop's lookups never read what it changed: no flush each
        _resolve(session, steps, by_name=by_name, reusable=reusable, stored=stored, has=has)
    changed = [s for s in steps if s.id in pending and s.state != StepState.PENDING]
    ready = [s for s in changed if s.state == StepState.READY]
    # each joins the scheduler's queue of its labels, build kind and tenant
    queues = (
        fairshare.queue_ids(session, build.kind, (build.project, build.user), {s.requires for s in ready})
        if ready
        else {}
    )
    _write_released(session, changed, queues, now)
    return ready


def _write_released(
    session: Session, changed: list[OpenStep], queues: Mapping[str, int], now: dt.datetime
) -> None:
    """Write what a release changed of each step: one executemany a kind of change (skipped,
    reused, ready), not a flush of thousands of ORM objects."""
    skipped: list[dict[str, object]] = []
    reused: list[dict[str, object]] = []
    ready: list[dict[str, object]] = []
    for step in changed:
        if step.state == StepState.SKIPPED:
            skipped.append({"b_id": step.id, "state": step.state, "finished_at": now, "error": step.error})
        elif step.state == StepState.SUCCEEDED:
            reused.append(
                {
                    "b_id": step.id,
                    "state": step.state,
                    "reused_from": step.reused_from,
                    "started_at": now,
                    "finished_at": now,
                    "node": step.node,
                    "log_key": step.log_key,
                    "output_identity": step.output_identity,
                    "resolved_key": step.resolved_key,
                    "reuse_reason": step.reuse_reason,
                }
            )
        else:
            ready.append(
                {
                    "b_id": step.id,
                    "state": step.state,
                    "ready_at": now,
                    "resolved_key": step.resolved_key,
                    "queue_id": queues[step.requires],
                }
            )
    for statement, rows in ((_WRITE_SKIPPED, skipped), (_WRITE_REUSED, reused), (_WRITE_READY, ready)):
        if rows:  # one executemany (the ORM's bulk UPDATE by primary key made the same, in more CPU)
            session.connection().execute(statement, rows)


def _write_by_id(*columns: str) -> Update:
    """An UPDATE of ``columns`` of the step whose id is bound as ``id`` (an executemany's)."""
    return (
        update(_STEPS)
        .where(_STEPS.c.id == bindparam("b_id", type_=_STEPS.c.id.type))
        .values({name: bindparam(name, type_=_STEPS.c[name].type) for name in columns})
    )


_STEPS = Step.metadata.tables["steps"]
_WRITE_SKIPPED = _write_by_id("state", "finished_at", "error")
_WRITE_REUSED = _write_by_id(
    "state",
    "reused_from",
    "started_at",
    "finished_at",
    "node",
    "log_key",
    "output_identity",
    "resolved_key",
    "reuse_reason",
)
_WRITE_READY = _write_by_id("state", "ready_at", "resolved_key", "queue_id")


def _resolve(
    session: Session,
    steps: list[OpenStep],
    *,
    by_name: Mapping[str, OpenStep],
    reusable: Mapping[str, Original],
    stored: Mapping[int, list[StoredOutput]],
    has: Callable[[str], bool] | None,
) -> None:
    """The loop of :func:`_release`: skip, reuse or make ready each pending step until nothing changes."""
    changed = True
    while changed:
        changed = False
        for step in steps:
            if step.state != StepState.PENDING:
                continue
            deps = [by_name[d] for d in step.depends_on]
            if any(d.state in (StepState.FAILED, StepState.CANCELLED, StepState.SKIPPED) for d in deps):
                step.state = StepState.SKIPPED
                failed = [d.name for d in deps if d.state != StepState.SUCCEEDED]
                step.error = f"not built: dependency {', '.join(failed)} did not succeed"
                changed = True
            elif all(d.state == StepState.SUCCEEDED for d in deps):
                same_input = reusable.get(step.input_key)
                original = find_equivalent(session, step, by_name, same_input)
                if (
                    original is not None
                    and original.id != step.id
                    and (has is None or _outputs_stored(session, original, has, stored))
                ):
                    adopt_outputs(session, step, original, by_name)
                    step.state = StepState.SUCCEEDED
                    step.reused_from = original.id
                    step.node = original.node
                    step.log_key = original.log_key
                    changed = True
                else:
                    step.state = StepState.READY


def open_steps(session: Session, build_id: int) -> list[OpenStep]:
    """What a release can change or reads: the build's pending steps (those keyed) and every step they depend
    on, directly or not (a resolved key reads the output identities of the whole closure:
    ``engine/outputs.py``), as rows, in one statement (:data:`_OPEN_STEPS_OF`).  The others
    (running, ready, done and needed by no pending step) are not read, so an advance costs what
    is still open, not the build's size."""
    statement = _OPEN_STEPS_OF[session.get_bind().dialect.name]
    return [OpenStep(*row) for row in session.execute(statement, {"build": build_id})]


def _open_steps_of(dialect: str) -> Select[*tuple[Any, ...]]:
    """:func:`open_steps`' statement: the names of the pending keyed steps and, recursively, of
    those they depend on (a recursive CTE: one round trip however deep the closure, where a
    query per level of dependencies made two or more), then their rows, by id."""
    wanted = (
        select(cast(Step.name, Text).label("name"))  # the type of the names read from JSON
        .where(Step.build_id == bindparam("build"), _IS_PENDING, Step.input_key != "")
        .cte("wanted", recursive=True)
    )
    dependent = Step.__table__.alias("dependent")
    if dialect == "postgresql":
        elements = func.json_array_elements_text(dependent.c.depends_on).table_valued("name")
        needed = elements.render_derived(name="needed").lateral()
        name = needed.c.name
    else:  # SQLite's JSON array elements: json_each's ``value`` column
        needed = func.json_each(dependent.c.depends_on).table_valued("value").alias("needed")
        name = needed.c.value
    wanted = wanted.union(
        select(name).select_from(
            wanted.join(
                dependent, (dependent.c.build_id == bindparam("build")) & (dependent.c.name == wanted.c.name)
            ).join(needed, true())
        )
    )
    return (
        select(*_OPEN_COLUMNS)
        .where(Step.build_id == bindparam("build"), Step.name.in_(select(wanted.c.name)))
        .order_by(Step.id)
    )


_OPEN_STEPS_OF = {dialect: _open_steps_of(dialect) for dialect in ("postgresql", "sqlite")}
"""Built once per dialect: an advance binds the build."""


_NOT_DONE = Step.state.not_in([literal_column(f"'{state.value}'") for state in sorted(TERMINAL_STEP_STATES)])
"""A step not in a terminal state, the states written into the statement: a list bound as
parameters is expanded at every execution (~0.1 ms of CPU each time, on the advance of every
finish)."""
_OPEN_STEPS = select(func.count()).select_from(Step).where(Step.build_id == bindparam("build"), _NOT_DONE)


def _all_steps_done(session: Session | Connection, build_id: int) -> bool:
    """Whether every step of the build is terminal (one count, the steps not loaded)."""
    return session.scalar(_OPEN_STEPS, {"build": build_id}) == 0


def _all_succeeded(session: Session, build_id: int) -> bool:
    """Whether every step of the build succeeded (one count, the steps not loaded)."""
    other = session.scalar(
        select(func.count())
        .select_from(Step)
        .where(Step.build_id == build_id, Step.state != StepState.SUCCEEDED)
    )
    return other == 0


class BuildOutput(NamedTuple):
    """A file (or image) a succeeded step of a build made, as staging and publishing read it."""

    filename: str
    sha256: str
    size: int
    kind: OutputKind


_BUILD_OUTPUTS = select(StepOutput.filename, StepOutput.sha256, StepOutput.size, StepOutput.kind).where(
    StepOutput.step_id.in_(
        select(func.coalesce(Step.reused_from, Step.id)).where(
            Step.build_id == bindparam("build"), Step.state == StepState.SUCCEEDED
        )
    )
)


def _build_outputs(session: Session, build_id: int) -> list[BuildOutput]:
    """The outputs of the build's succeeded steps (a reused step's are its original's), in one
    query that loads no step, read as rows (a dependent step released stages them all)."""
    return [BuildOutput(*row) for row in session.execute(_BUILD_OUTPUTS, {"build": build_id})]


PUBLISH_THREADS = 2
"""Files a publication takes from the artifact store at once (a package checked or fetched, a
source bundle unpacked): a publication's time is serial time its user waits for.  Two: the
40-package bench build's publish_build took a median 0.27 s with 2, 0.34 s with 1 and 0.36 s
with 4 (24 runs each, 2 cores, load 2-5): unpacking is mostly Python, and more threads only
contend for the interpreter."""


def _stored_file(ctx: FarmContext, sha256: str, dest: Path) -> Path:
    """The object ``sha256`` as a file to read: where the store keeps it when its objects are
    files here (:class:`~buildfarm.backends.base.LocalObjects`), once its bytes hash to its name
    (a hardlink of it is then published: no copy made); else a copy fetched to ``dest``, which
    says when it is missing or damaged (a damaged object is quarantined by the fetch)."""
    if isinstance(ctx.store, LocalObjects):
        path = ctx.store.object_path(sha256)
        try:
            if file_sha256(path) == sha256:
                return path
        except FileNotFoundError:
            pass  # the fetch says so
    ctx.store.fetch(sha256, dest)
    return dest


def _materialize(
    ctx: FarmContext, outputs: list[BuildOutput], into: Path, held: Mapping[str, Path] | None = None
) -> list[PackageFile]:
    """The package outputs as local files: the repository's own copy of those it holds
    (``held``, by filename), the others taken from the store (:func:`_stored_file`), several at
    once."""
    wanted = [output for output in outputs if output.kind.is_package]

    def one(output: BuildOutput) -> PackageFile:
        path = (held or {}).get(output.filename)
        if path is None:
            path = _stored_file(ctx, output.sha256, into / output.filename)
        return PackageFile(output.filename, output.sha256, output.size, path)

    if len(wanted) < 2:
        return [one(output) for output in wanted]
    with ThreadPoolExecutor(max_workers=PUBLISH_THREADS, thread_name_prefix="publish") as pool:
        return list(pool.map(one, wanted))


def _keep_inputs(ctx: FarmContext, sources: list[PackageFile]) -> None:
    """The build inputs among the build's source files (upstream tarballs, fetched .dsc files)
    into the repository's own store of them, where it has one (Pulp's file repository of build
    inputs: :mod:`buildfarm.backends.pulp.inputs`)."""
    if not isinstance(ctx.repo, BuildInputKeeper) or not sources:
        return
    with ctx.db.session() as session:
        kept = set(
            session.scalars(
                select(BuildInput.sha256).where(BuildInput.sha256.in_({p.sha256 for p in sources}))
            )
        )
    inputs = [p for p in sources if p.sha256 in kept]
    if inputs:
        ctx.repo.keep_build_inputs(inputs)


def materialize_sources(
    ctx: FarmContext,
    bundles: list[str],
    into: Path,
    held: Mapping[str, Path] | None = None,
    listings: Mapping[str, list[StoredPackage] | None] | None = None,
) -> list[PackageFile]:
    """The source packages the build's package steps built (each step's .dsc and its files),
    published beside the binaries so ``apt-get source`` gets exactly what was built.

    A bundle whose files the repository holds already (``held``, by filename, with the sha256s
    :mod:`.bundlefiles` remembers, or ``listings`` read already) is not fetched: its files are
    the repository's copies.  The listings of the bundles unpacked are remembered."""
    files, learned = unpack_sources(ctx, bundles, into, held, listings)
    if learned:
        bundlefiles.remember(ctx.work_root, learned)
    return files


def unpack_sources(
    ctx: FarmContext,
    bundles: list[str],
    into: Path,
    held: Mapping[str, Path] | None = None,
    listings: Mapping[str, list[StoredPackage] | None] | None = None,
) -> tuple[list[PackageFile], dict[str, list[StoredPackage]]]:
    """:func:`materialize_sources`' files, several bundles unpacked at once, and the listings it
    learned (by bundle) for the caller to remember (a publication does once it is published:
    the cache is no part of it)."""
    ordered = sorted(set(bundles))

    def one(index: int, sha256: str) -> tuple[list[PackageFile], list[StoredPackage] | None]:
        known = listings[sha256] if listings is not None else bundlefiles.listing(ctx.work_root, sha256)
        if known is not None and held is not None and all(f.filename in held for f in known):
            return [PackageFile(f.filename, f.sha256, f.size, held[f.filename]) for f in known], None
        tarball = _stored_file(ctx, sha256, into / f"source-{index}.tar.gz")
        directory = into / f"source-{index}"
        unpack_tree(tarball, directory)
        found = []
        if not (directory / "debian").exists():  # else a bare tree: a step recorded before source packages
            for path in sorted(directory.iterdir()):
                found.append(PackageFile(path.name, file_sha256(path), path.stat().st_size, path))
        learned = [StoredPackage(f.filename, f.sha256, f.size) for f in found] if known is None else None
        return found, learned

    if len(ordered) < 2:
        done = [one(index, sha256) for index, sha256 in enumerate(ordered)]
    else:
        with ThreadPoolExecutor(max_workers=PUBLISH_THREADS, thread_name_prefix="publish") as pool:
            done = list(pool.map(one, range(len(ordered)), ordered))
    files = [f for found, _learned in done for f in found]
    learned = {sha256: new for sha256, (_f, new) in zip(ordered, done, strict=True) if new is not None}
    return files, learned


def _held(
    ctx: FarmContext,
    ref: BuildRef,
    outputs: list[BuildOutput],
    listings: Mapping[str, list[StoredPackage] | None],
) -> dict[str, Path]:
    """What the repository holds already of the build's outputs and remembered source files
    (``listings``: :mod:`.bundlefiles`'s, by bundle; :class:`~buildfarm.backends.base.HoldsPackages`;
    empty for one that cannot say)."""
    if not isinstance(ctx.repo, HoldsPackages):
        return {}
    wanted = [StoredPackage(o.filename, o.sha256, o.size) for o in outputs if o.kind.is_package]
    for listed in listings.values():
        wanted += listed or []
    return ctx.repo.held_files(ref, wanted) if wanted else {}


def one_line(exc: BaseException) -> str:
    """An error as the single line a person sees in ``build show``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def waiting_since(session: Session, build: Build) -> dt.datetime:
    """When the build started needing the repository: its last step's end (or its creation);
    one query, the steps not loaded."""
    last = session.scalar(select(func.max(Step.finished_at)).where(Step.build_id == build.id))
    return last if last is not None else build.created_at


def _gives_up(ctx: FarmContext, exc: BuildfarmError, since: dt.datetime) -> bool:
    elapsed = (utcnow() - since).total_seconds()
    return not isinstance(exc, TemporaryError) or elapsed >= ctx.settings.repository.give_up_seconds


def _stage(ctx: FarmContext, session: Session, build: Build, needs_stage: list[OpenStep]) -> bool:
    """Stage the build's packages for ``needs_stage`` (steps just made ready); on failure take
    them back (written in one statement, and on their rows). Returns success."""
    try:
        packages = [
            StoredPackage(o.filename, o.sha256, o.size)
            for o in _build_outputs(session, build.id)
            if o.kind.is_package
        ]
        build.staging_source = ctx.repo.stage(build_ref(build), packages, ctx.store.fetch)
    except Exception as caught:  # a full or read-only disk too: the steps wait, saying why
        exc = repository_fault(caught)
        line = one_line(exc)
        now = utcnow()
        if _gives_up(ctx, exc, waiting_since(session, build)):
            log.warning("build %s: staging failed, its dependent steps are not built: %s", build.id, line)
            error = f"not built: staging failed: {line}"
            state = StepState.SKIPPED
            values: dict[str, object] = {"finished_at": now, "error": error}
        else:
            log.warning("build %s: staging waits: %s", build.id, line)
            # no step may run without the packages it builds against
            state, values = StepState.PENDING, {}
            build.error = f"staging waits for the repository (tried again every reaper period): {line}"
        ids = [step.id for step in needs_stage]
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start : start + LOOKUP_CHUNK]
            session.execute(
                update(_STEPS)
                .where(_STEPS.c.id.in_(chunk))
                .values({**values, "state": state, "ready_at": None})
            )
        for step in needs_stage:
            step.state = state
        return False
    build.error = None
    return True


_OPEN_OF_BUILD = select(
    Build.state,
    select(func.count())
    .select_from(Step)
    .where(Step.build_id == Build.id, _NOT_DONE)
    .correlate(Build)
    .scalar_subquery(),
).where(Build.id == bindparam("id"))
"""The build's state and how many of its steps are not done (one row; the count runs once: joined
to the pending steps, SQLite counted again for each, seconds at thousands of steps)."""
_KEYED_PENDING = (Step.build_id == bindparam("id"), _IS_PENDING, Step.input_key != "")
_DEPENDENCY = Step.__table__.alias("dependency")
_WANTED = (
    func.json_array_elements_text(Step.depends_on)
    .table_valued("name")
    .render_derived(name="wanted")
    .lateral()
)
"""The names a pending step depends on, each looked up by the (build, name) key: driven from
the pending steps (``IN (SELECT ...)`` let a generic plan scan the build's steps once per row)."""
_BUILD_AND_PENDING = union_all(
    # the first branch's columns give the union's their types
    _OPEN_OF_BUILD.add_columns(
        type_coerce(null(), JSON), type_coerce(null(), Step.name.type), type_coerce(null(), Step.state.type)
    ),
    select(null(), null(), Step.depends_on, null(), null()).where(*_KEYED_PENDING),
    select(null(), null(), null(), _DEPENDENCY.c.name, _DEPENDENCY.c.state)
    .select_from(
        Step.__table__.join(_WANTED, true()).join(
            _DEPENDENCY, (_DEPENDENCY.c.build_id == Step.build_id) & (_DEPENDENCY.c.name == _WANTED.c.name)
        )
    )
    .where(*_KEYED_PENDING),
)
""":data:`_OPEN_OF_BUILD`'s row (its state is not null), each pending step's dependencies
(:data:`_PENDING`) and the state of each of those (:data:`_STATES_OF`, by name), in one
statement: the count still runs once (a branch of its own).  On PostgreSQL, where it saves a
round trip or two; SQLite has none to save and runs the statements apart in less CPU (~0.5
against ~0.6 ms)."""


@gcpause.paused()
def advance_build(ctx: FarmContext, build_id: int) -> None:
    """Release what can run, then dispatch it; publish or close the build when every step is done.

    Most advances (the one after each finish) find that nothing can change: a pending step still
    waits, or a step is still open.  That is told from rows, in a few plain statements without a
    lock (whatever committed before this advance began is seen; what commits later asks for an
    advance of its own); only an advance with something to do locks the build, looks again and
    loads the build and its open steps.

    On PostgreSQL that transaction commits without waiting for its WAL to reach the disk
    (:data:`ASYNC_COMMIT`, set by the statement that locks the build): the flush waits on the disk,
    milliseconds when it is busy, at every advance that releases steps (after one finish in ten
    in the scheduler's bench).  Safe because an advance only writes what can be told again from what
    it read: a crash of the server loses only the last commits, in commit order (a later commit
    that waits, e.g. a publication's, flushes all the WAL before its own), so a lost advance
    leaves the build as it found it, its released steps pending behind dependencies that
    succeeded (or its state running with every step done), and that is exactly what the next
    advance releases (or closes) again: the one after any later finish of the build, or the
    reaper's for a running build with no step ready or running; a staging whose record was lost
    is made again by it, as after a crash before a waiting commit.  A claim of a released step
    commits after the release, so it is lost with it if the release is; a ticket sent for a
    release that was lost finds its step pending and claims another of its pool, or nothing,
    and the release made again sends tickets of its own."""
    with ctx.db.statements() as connection:  # no transaction: on PostgreSQL no BEGIN, no COMMIT
        if not _may_change(connection, build_id):
            return
    with ctx.db.transaction() as connection, ctx.db.session_on(connection) as session:
        to_run, kind, finish = _advance(ctx, session, build_id)
    for step_id, attempt, node in to_run:
        ctx.dispatcher.run_step(step_id, attempt, kind, node)
    if finish == "publish":
        publish_build(ctx, build_id)
    elif finish == "close":
        drop_staging(ctx, build_id)


def _may_change(connection: Connection, build_id: int) -> bool:
    """Whether an advance of the build may have something to do (read as rows, without a lock)."""
    build: tuple[BuildState, int] | None = None
    pending: list[list[str]] = []
    states: dict[str, StepState] | None = None
    if connection.dialect.name == "postgresql":
        states = {}
        for state, unfinished, depends_on, name, dependency_state in connection.execute(
            _BUILD_AND_PENDING, {"id": build_id}
        ):
            if state is not None:
                build = state, unfinished
            elif depends_on is not None:
                pending.append(list(depends_on))
            else:
                states[name] = dependency_state
    else:
        row = connection.execute(_OPEN_OF_BUILD, {"id": build_id}).first()
        build = None if row is None else (row[0], row[1])
        pending = [list(depends_on) for (depends_on,) in connection.execute(_PENDING, {"build": build_id})]
    if build is None:
        log.warning("advance: build %s does not exist", build_id)
        return False
    state, unfinished = build
    if state in TERMINAL_BUILD_STATES and state != BuildState.CANCELLED:
        return False
    if state == BuildState.CANCELLED:
        return True
    if pending:
        if states is not None:  # read with the rest
            return _any_releasable(pending, states)
        return _may_release(connection, build_id, pending)
    return not unfinished


def _advance(
    ctx: FarmContext, session: Session, build_id: int
) -> tuple[list[tuple[int, int, str | None]], str, str | None]:
    """:func:`advance_build` of a build whose state or steps may change, under its lock: the
    tickets to send, the build's kind and what is left to do ("publish", "close" or None)."""
    build = _lock_build(session, build_id)
    if build is None or (build.state in TERMINAL_BUILD_STATES and build.state != BuildState.CANCELLED):
        return [], "", None  # deleted, or finished by another advance meanwhile
    finish = "close" if build.state == BuildState.CANCELLED else None
    # what may be released, told from the rows the release reads anyway (no query of its own)
    steps = open_steps(session, build.id) if finish is None else []
    releasable = _releasable_of(steps) if finish is None else None
    released = _release(session, build, ctx.store.has, steps) if releasable else []
    needs_stage = [s for s in released if s.depends_on]
    if needs_stage and not _stage(ctx, session, build, needs_stage):
        released = [s for s in released if not s.depends_on]
        if any(s.state == StepState.SKIPPED for s in needs_stage):
            _release(session, build)  # skips what depends on them; nothing new becomes ready
    released.sort(key=lambda s: -s.priority)
    to_run = routing.tickets(session, ctx, released)
    # a pending step that stays pending is not done, nor is one made ready: no count
    if finish is None and releasable is not False and not released and _all_steps_done(session, build.id):
        if _all_succeeded(session, build.id):
            finish = "publish"
        else:
            build.state = BuildState.FAILED
            build.finished_at = utcnow()
            bad = [s.name for s in build.steps if s.state in (StepState.FAILED, StepState.CANCELLED)]
            if bad:
                build.error = f"step(s) failed: {', '.join(bad)}; latest was not moved"
            else:
                skipped = [s for s in build.steps if s.state == StepState.SKIPPED]
                names = ", ".join(s.name for s in skipped)
                build.error = f"step(s) {names} {skipped[0].error}; latest was not moved"
            finish = "close"
    return to_run, build.kind, finish


def drop_staging(ctx: FarmContext, build_id: int) -> bool:
    """Remove a finished build's staging repository; False if the repository is down.

    A repository that is down leaves ``staging_source`` set, and the reaper tries again; one
    that refuses (a permanent error) is logged and not asked again.
    """
    with ctx.db.session() as session:
        ref = build_ref(session.get_one(Build, build_id))
    try:
        ctx.repo.drop_staging(ref)
    except Exception as caught:
        exc = repository_fault(caught)
        if isinstance(exc, TemporaryError):
            log.warning("build %s: staging not dropped yet (the reaper retries): %s", build_id, one_line(exc))
            return False
        log.warning("build %s: staging not dropped: %s", build_id, one_line(exc))
    with ctx.db.session() as session:
        session.execute(
            update(Build)
            .where(Build.id == build_id, Build.state.in_(TERMINAL_BUILD_STATES))
            .values(staging_source=None)
        )
    return True


@gcpause.paused()
def publish_build(ctx: FarmContext, build_id: int) -> bool:
    """Publish a build whose steps all succeeded; only one caller wins. Returns whether it did."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=PUBLISH_CLAIM_SECONDS)
    with ctx.db.session() as session:
        claimed = session.execute(
            update(Build)
            .where(
                Build.id == build_id,
                (Build.state == BuildState.RUNNING)
                | ((Build.state == BuildState.PUBLISHING) & (Build.publish_claimed_at < stale)),
            )
            .values(state=BuildState.PUBLISHING, publish_claimed_at=now)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return False
    with ctx.db.session() as session:  # read as rows: a build of thousands of steps loads none
        build = session.get_one(Build, build_id, options=[defer(Build.manifest)])
        ref = build_ref(build)
        outputs = _build_outputs(session, build_id)
        bundles = list(
            session.scalars(
                select(Step.source_sha256).where(
                    Step.build_id == build_id,
                    Step.kind == StepKind.PACKAGE,
                    Step.state == StepState.SUCCEEDED,
                )
            )
        )
        since = waiting_since(session, build)
    tmp: Path | None = None
    published = False
    try:
        tmp = Path(tempfile.mkdtemp(dir=ctx.work_root, prefix="publish-"))
        # Each bundle's remembered files, read once for both (one index, not thousands of files).
        listings = bundlefiles.listings(ctx.work_root, bundles)
        held = _held(ctx, ref, outputs, listings)
        packages = _materialize(ctx, outputs, tmp, held)
        sources, learned = unpack_sources(ctx, bundles, tmp, held, listings)
        packages += sources
        _keep_inputs(ctx, sources)
        source = ctx.repo.publish(ref, packages, move_latest=moves_latest(ref.kind))
        published = True
    except Exception as exc:  # any fault releases the claim: never `publishing` for 10 minutes unsaid
        _publish_failed(ctx, build_id, since, repository_fault(exc))
        return False
    finally:
        if tmp is not None and published:  # removed beside the build's end, not before it
            REMOVALS.start(tmp)  # (a file per package and source: 10-60 ms waiting on the disk)
        elif tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    with ctx.db.session() as session:
        session.execute(
            update(Build)
            .where(Build.id == build_id, Build.state == BuildState.PUBLISHING)
            .values(state=BuildState.SUCCEEDED, finished_at=utcnow(), published_url=source.line(), error=None)
        )
    log.info("build %s published: %s", build_id, source.line())
    if learned:  # a shortcut for later publications, written once this one is done
        try:
            bundlefiles.remember(ctx.work_root, learned)
        except OSError as exc:  # a full disk: the next publication unpacks those bundles again
            log.warning("build %s: bundle listings not remembered: %s", build_id, exc)
    drop_staging(ctx, build_id)
    return True


TEMPORARY_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT}
)
"""Filesystem faults that an operator or time clears without anyone changing the build: a full
disk or quota (space is freed), a read-only filesystem (remounted read-write after a repair or a
maintenance window; the kernel also remounts ext4 read-only on an I/O error), a transient I/O or
busy error.  Publishing pauses and tries again (bounded by ``repository_give_up_seconds``); any
other ``OSError`` (permission denied, a missing directory: a configuration mistake) fails the
build at once with its reason, and ``build retry`` publishes it once fixed."""


def repository_fault(exc: Exception) -> BuildfarmError:
    """Any exception met while staging or publishing, as the farm's temporary or permanent error (one line).

    The repositories wrap their own errors already; what reaches here unwrapped is the machine
    itself (``OSError`` from the artifact store's or the local repository's disk, a connection
    error from a client library) or a bug, which is logged with its stack trace and is permanent.
    """
    if isinstance(exc, BuildfarmError):
        return exc
    if isinstance(exc, ConnectionError | TimeoutError) or (isinstance(exc, OSError) and exc.errno is None):
        return TemporaryError(f"{type(exc).__name__}: {exc}")  # requests' and urllib3's errors too
    if isinstance(exc, OSError):
        # a copy puts its source in filename and the target it could not write in filename2
        target = exc.filename2 or exc.filename
        where = f" ({target})" if target else ""
        reason = f"{exc.strerror or exc}{where}"
        if exc.errno in TEMPORARY_ERRNOS:
            return TemporaryError(f"the disk refused: {reason}")
        return PermanentError(f"the disk refused: {reason}")
    log.error("publishing failed on an unexpected error", exc_info=exc)
    return PermanentError(f"unexpected {type(exc).__name__}: {exc}")


def _publish_failed(ctx: FarmContext, build_id: int, since: dt.datetime, exc: BuildfarmError) -> None:
    """Fail the build, or release the claim so that the reaper's advance publishes after a pause.

    The pause is made by back-dating the claim: ``publish_build`` takes a claim older than
    ``PUBLISH_CLAIM_SECONDS``, so a claim dated ``now + pause - PUBLISH_CLAIM_SECONDS`` is free
    ``pause`` seconds from now.  Whatever Pulp did before it failed stays unpublished, or was
    complete: the next attempt finds and keeps it.
    """
    line = one_line(exc)
    now = utcnow()
    elapsed = (now - since).total_seconds()
    where = (Build.id == build_id) & (Build.state == BuildState.PUBLISHING)
    with ctx.db.session() as session:
        if _gives_up(ctx, exc, since):
            log.error("build %s not published: %s", build_id, line)
            session.execute(
                update(Build)
                .where(where)
                .values(
                    state=BuildState.FAILED,
                    finished_at=now,
                    publish_claimed_at=None,
                    error=f"not published: {line} (gave up after {elapsed:.0f}s; retry publishes it)",
                )
            )
            return
        settings = ctx.settings
        pause = min(
            settings.repository.retry_max_seconds, max(settings.repository.retry_min_seconds, elapsed / 2)
        )
        log.warning("build %s: publishing waits %.3gs: %s", build_id, pause, line)
        session.execute(
            update(Build)
            .where(where)
            .values(
                publish_claimed_at=now + dt.timedelta(seconds=pause - PUBLISH_CLAIM_SECONDS),
                error=f"publishing waits (next attempt in {pause:.3g}s): {line}",
            )
        )
