"""The retention sweep over random histories, against a real SQLite database and the real fs store.

Hypothesis draws builds over two projects, two branches and every class, of every age and state,
whose steps reuse earlier steps (across builds and branches; by input key or, with an input key
of their own, by output identity) and share content objects; some objects are put again just
before the sweep (an upload in flight).  An oracle written from the
policy's words alone says which rows, objects and logs must survive and which must go, and the
test compares with what is actually left in the database and on disk: the sweep never deletes
what a kept build references, deletes everything the policy lets go, spares objects put within
the grace period, and a second sweep finds nothing more.  Uploads made through the API (``Upload``
rows) are part of the history: some of the bytes a step names, some that no build ever used, of
every age; an expired upload's object goes unless a kept build or a younger upload names it.
The repository here only records distributions (the real local repository and apt are in
tests/integration/retention/test_retention_local.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from buildfarm.backends.base import BuildRef
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import PermanentError
from buildfarm.model.retention import EXPIRED_INPUT_KEY
from buildfarm.model.settings import load_settings
from buildfarm.model.types import AptSource
from buildfarm.retention import run_sweep
from buildfarm.state.db import Database, upgrade
from buildfarm.state.models import Build, Step, StepOutput, Upload
from buildfarm.wiring import Wiring

from farmkit import RecordingDispatcher

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
KEEP_NEWEST = 1
DAYS = {"nightly": 10, "on-demand": 5, "personal": 5}
PACKAGES = ("alpha", "beta", "gamma")
TERMINAL = ("succeeded", "failed", "cancelled")
UPLOAD_HOURS = 24.0


@dataclass(frozen=True)
class UploadPlan:
    content: tuple[str, int] | int  # (package, version): a step's source tarball; int: bytes no step has
    age_hours: float


uploads_plans = st.lists(
    st.builds(
        UploadPlan,
        content=st.tuples(st.sampled_from(PACKAGES), st.integers(0, 9)) | st.integers(0, 3),
        age_hours=st.sampled_from((0.5, 23.0, 25.0, 100.0, 1000.0)),
    ),
    max_size=8,
)


# -- the history a test draws ------------------------------------------------------------------


@dataclass(frozen=True)
class StepPlan:
    name: str
    state: str
    reuse: int | None  # index into earlier original steps of the same name to reuse
    version: int  # which content: equal versions share objects across builds
    attempts: int


@dataclass(frozen=True)
class BuildPlan:
    project: str
    branch: str
    kind: str
    state: str
    age_days: float
    steps: tuple[StepPlan, ...]


def _step(state: str) -> st.SearchStrategy[StepPlan]:
    return st.builds(
        StepPlan,
        name=st.sampled_from(PACKAGES),
        state=st.just(state),
        reuse=st.none() | st.integers(0, 5) if state == "succeeded" else st.none(),
        version=st.integers(0, 9),
        attempts=st.integers(1, 2),
    )


@st.composite
def build_plans(draw: st.DrawFn) -> BuildPlan:
    state = draw(st.sampled_from(("succeeded", "failed", "succeeded", "cancelled", "running")))
    states = {
        "succeeded": st.just("succeeded"),
        "failed": st.sampled_from(("succeeded", "failed", "failed")),
        "cancelled": st.sampled_from(("succeeded", "cancelled")),
        "running": st.sampled_from(("succeeded", "running")),
    }[state]
    raw = draw(st.lists(states.flatmap(_step), min_size=1, max_size=3, unique_by=lambda s: s.name))
    return BuildPlan(
        project=draw(st.sampled_from(("p1", "p1", "p2"))),
        branch=draw(st.sampled_from(("main", "main", "dev"))),
        kind=draw(st.sampled_from(("nightly", "on-demand", "personal", "nightly", "release"))),
        state=state,
        age_days=draw(st.sampled_from((30.0, 60.0, 0.5, 3.0, 7.0, 12.0, 30.0))),
        steps=tuple(raw),
    )


# -- a repository that only records what it serves ---------------------------------------------


@dataclass
class RecordingRepository:
    served: set[int] = field(default_factory=set)
    latest: set[int] = field(default_factory=set)
    expired: list[int] = field(default_factory=list)
    staging_dropped: list[int] = field(default_factory=list)

    def drop_staging(self, build: BuildRef) -> None:
        self.staging_dropped.append(build.build_id)

    def expire_build(self, build: BuildRef) -> None:
        if build.build_id in self.latest:
            raise PermanentError(f"build {build.build_id} is what latest serves")
        self.expired.append(build.build_id)
        self.served.discard(build.build_id)

    def collect_garbage(self) -> int | None:
        return None


# -- the world: database rows, objects, logs ----------------------------------------------------


@dataclass
class World:
    builds: dict[int, Build]
    steps: dict[int, Step]
    outputs: dict[int, list[str]]  # producing step id -> output sha256s
    objects: set[str]
    logs: set[str]
    refreshed: set[str]
    uploads: dict[int, tuple[str, bool]]  # upload row id -> (sha256, expired)


def _content(kind: str, name: str, version: int) -> bytes:
    return f"{kind}:{name}:{version}\n".encode()


def _make_world(
    ctx: FarmContext,
    store: FsArtifactStore,
    plans: list[BuildPlan],
    refresh: set[int],
    upload_plans: Sequence[UploadPlan] = (),
) -> World:
    builds: dict[int, Build] = {}
    steps: dict[int, Step] = {}
    outputs: dict[int, list[str]] = {}
    originals: dict[str, list[Step]] = {name: [] for name in PACKAGES}
    logs: set[str] = set()
    with ctx.db.session() as session:
        for plan in plans:
            finished = NOW - dt.timedelta(days=plan.age_days)
            build = Build(
                project=plan.project,
                branch=plan.branch,
                kind=plan.kind,
                user="alice",
                state=plan.state,
                manifest={},
                environment_id="env",
                created_at=finished - dt.timedelta(minutes=5),
                finished_at=None if plan.state == "running" else finished,
                published_url="deb x" if plan.state == "succeeded" else None,
                # left by an outage
                staging_source=AptSource("http://staging") if plan.state == "failed" else None,
            )
            session.add(build)
            session.flush()
            for sp in plan.steps:
                source = store.put_bytes(_content("source", sp.name, sp.version)).sha256
                pool = originals[sp.name]
                producer = pool[sp.reuse % len(pool)] if sp.reuse is not None and pool else None
                step = Step(
                    build_id=build.id,
                    name=sp.name,
                    version=str(sp.version),
                    origin="test",
                    source_sha256=source,
                    tree_hash="0" * 64,
                    # a reuse by output identity (engine/outputs.py) has an input key of its own
                    input_key=producer.input_key
                    if producer and sp.reuse is not None and sp.reuse % 2 == 0
                    else hashlib.sha256(os.urandom(8)).hexdigest(),
                    depends_on=[],
                    state=sp.state,
                    reused_from=producer.id if producer else None,
                    attempt=0 if producer else (sp.attempts if sp.state != "running" else 1),
                    finished_at=finished,
                )
                session.add(step)
                session.flush()
                if producer is not None:
                    step.log_key = producer.log_key
                else:
                    for attempt in range(1, step.attempt + 1):
                        key = f"logs/{build.id}/{sp.name}/{attempt}.log"
                        with store.open_log(key) as writer:
                            writer.write_line(f"attempt {attempt}")
                        logs.add(key)
                        step.log_key = key
                    if sp.state == "succeeded":
                        originals[sp.name].append(step)
                        shas = []
                        for suffix in ("deb", "buildinfo"):
                            data = _content(suffix, sp.name, sp.version)
                            ref = store.put_bytes(data)
                            session.add(
                                StepOutput(
                                    step_id=step.id,
                                    attempt=step.attempt,
                                    filename=f"{sp.name}_{sp.version}.{suffix}",
                                    sha256=ref.sha256,
                                    size=ref.size,
                                )
                            )
                            shas.append(ref.sha256)
                        outputs[step.id] = shas
                steps[step.id] = step
            builds[build.id] = build
            store.put_build_manifest(build.id, {"id": build.id})
        uploads: dict[int, tuple[str, bool]] = {}
        for up in upload_plans:
            data = (
                _content("source", *up.content)
                if isinstance(up.content, tuple)
                else _content("upload", "x", up.content)
            )
            ref = store.put_bytes(data)
            row = Upload(
                sha256=ref.sha256,
                size=ref.size,
                user="bob",
                uploaded_at=NOW - dt.timedelta(hours=up.age_hours),
            )
            session.add(row)
            session.flush()
            uploads[row.id] = (ref.sha256, up.age_hours > UPLOAD_HOURS)
    objects = _stored_objects(store)
    old = (NOW - dt.timedelta(days=40)).timestamp()
    for sha in objects:  # everything was put long ago ...
        os.utime(store.object_path(sha), (old, old))
    ordered = sorted(objects)
    refreshed = {ordered[i % len(ordered)] for i in refresh} if ordered else set()
    for sha in refreshed:  # ... except what is being uploaded again right now
        store.put_file(store.object_path(sha))
    return World(builds, steps, outputs, objects, logs, refreshed, uploads)


def _stored_objects(store: FsArtifactStore) -> set[str]:
    return {p.name for p in (store.root / "objects" / "sha256").glob("*/*")}


def _stored_logs(store: FsArtifactStore) -> set[str]:
    return {str(p.relative_to(store.root)) for p in (store.root / "logs").rglob("*.log")}


# -- the oracle: the policy in its own words ----------------------------------------------------


@dataclass
class Expected:
    in_flight: set[str]  # unreferenced, but put again within the grace period: must stay
    expired: set[int]
    builds: set[int]
    steps: set[int]
    objects: set[str]
    logs: set[str]
    served: set[int]
    uploads: set[int]  # upload rows left: the young ones
    upload_objects: int  # distinct objects of expired uploads that nothing kept names


def oracle(world: World, served: set[int]) -> Expected:
    builds, steps = world.builds, world.steps
    by_branch: dict[tuple[str, str], list[Build]] = {}
    for build in builds.values():
        by_branch.setdefault((build.project, build.branch), []).append(build)
    kept: set[int] = set()
    for build in builds.values():
        if (
            build.state not in TERMINAL
            or build.kind == "release"
            or (
                build.finished_at is not None
                and build.finished_at >= NOW - dt.timedelta(days=DAYS[build.kind])
            )
        ):
            kept.add(build.id)
    for branch_builds in by_branch.values():
        done = sorted((b for b in branch_builds if b.state in TERMINAL), key=lambda b: b.id)
        kept.update(b.id for b in done[-KEEP_NEWEST:])
        published = [b for b in done if b.state == "succeeded" and b.kind != "personal"]
        if published:
            kept.add(max(published, key=lambda b: (b.finished_at, b.id)).id)
    kept_steps = {s.id for s in steps.values() if s.build_id in kept}
    needed = {steps[s].reused_from for s in kept_steps if steps[s].reused_from is not None}
    last: dict[tuple[str, str, str, str], Step] = {}
    for step in sorted(steps.values(), key=lambda s: s.build_id):
        if step.state in ("succeeded", "failed"):
            build = builds[step.build_id]
            last[(build.project, build.branch, step.name, step.state)] = step
    log_holders = {s.id for s in last.values()}
    surviving = kept_steps | {s for s in steps if s in needed or s in log_holders}
    whole = kept_steps | {s for s in needed if s is not None}  # everything they name stays
    objects: set[str] = set()
    logs: set[str] = set()
    for sid in whole:
        step = steps[sid]
        objects.add(step.source_sha256)
        objects.update(world.outputs.get(step.reused_from or step.id, []))
    expired_uploads = {sha for sha, expired in world.uploads.values() if expired}
    objects.update(sha for sha, expired in world.uploads.values() if not expired)
    for sid in surviving:
        step = steps[sid]
        logs.update(f"logs/{step.build_id}/{step.name}/{a}.log" for a in range(1, step.attempt + 1))
        if step.log_key:
            logs.add(step.log_key)
    return Expected(
        expired=set(builds) - kept,
        builds=kept | {steps[s].build_id for s in surviving},
        steps=surviving,
        objects=(objects | world.refreshed) & world.objects,
        in_flight=world.refreshed - objects,
        logs=logs & world.logs,
        served=served & kept,
        uploads={row for row, (_sha, expired) in world.uploads.items() if not expired},
        upload_objects=len(expired_uploads - objects),
    )


# -- the test -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path_factory.mktemp('retention')}/state.db"
    upgrade(url)
    db = Database(url)
    yield db
    db.dispose()


def _context(db: Database, root: Path, repo: RecordingRepository, grace: float) -> FarmContext:
    config = load_settings(
        state_dir=root / "state",
        database_url=db.url,
        redis_url="redis://unused.invalid:1/0",
        retention_nightly_days=DAYS["nightly"],
        retention_on_demand_days=DAYS["on-demand"],
        retention_personal_days=DAYS["personal"],
        retention_keep_newest=KEEP_NEWEST,
        retention_grace_seconds=grace,
        retention_upload_hours=UPLOAD_HOURS,
    )
    return FarmContext(
        settings=config,
        db=db,
        store=FsArtifactStore(root / "artifacts"),
        repo=repo,  # type: ignore[arg-type]
        dispatcher=RecordingDispatcher(),
        parts=Wiring(config),
    )


def _rows(db: Database) -> tuple[set[int], set[int]]:
    with db.session() as session:
        return set(session.scalars(select(Build.id))), set(session.scalars(select(Step.id)))


def _upload_rows(db: Database) -> set[int]:
    with db.session() as session:
        return set(session.scalars(select(Upload.id)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plans=st.lists(build_plans(), min_size=4, max_size=14),
    refresh=st.sets(st.integers(0, 40), max_size=15),
    upload_plans=uploads_plans,
)
def test_sweep_keeps_what_kept_builds_reference_and_deletes_the_rest(
    database: Database, plans: list[BuildPlan], refresh: set[int], upload_plans: list[UploadPlan]
) -> None:
    root = Path(tempfile.mkdtemp(prefix="retention-"))
    try:
        with database.session() as session:
            for model in (StepOutput, Step, Build, Upload):
                session.execute(delete(model))
        repo = RecordingRepository()
        ctx = _context(database, root, repo, grace=3600.0)
        store = ctx.store
        assert isinstance(store, FsArtifactStore)
        world = _make_world(ctx, store, plans, refresh, upload_plans)
        repo.served = {b.id for b in world.builds.values() if b.state == "succeeded"}
        expected = oracle(world, repo.served)
        repo.latest = repo.served - set(expected.expired)  # the repository refuses to drop them

        dry = run_sweep(ctx, dry_run=True, now=NOW)
        assert set(dry.build_ids) == expected.expired
        assert _rows(database) == (set(world.builds), set(world.steps))
        assert _stored_objects(store) == world.objects and _stored_logs(store) == world.logs
        assert _upload_rows(database) == set(world.uploads)
        assert dry.uploads == expected.upload_objects

        report = run_sweep(ctx, dry_run=False, now=NOW)
        event(f"expired: {min(len(report.build_ids), 3)}+, reduced to records: {report.builds_reduced > 0}")
        event(f"objects deleted: {report.objects > 0}, kept in flight: {report.objects_skipped_recent > 0}")
        assert set(report.build_ids) == expected.expired
        assert report.skipped_builds == []
        builds, steps = _rows(database)
        assert builds == expected.builds
        assert steps == expected.steps
        assert _stored_objects(store) == expected.objects
        assert _stored_logs(store) == expected.logs
        assert repo.served == expected.served
        assert _upload_rows(database) == expected.uploads
        assert report.uploads == expected.upload_objects
        event(f"uploads expired and unused: {min(report.uploads, 2)}+")
        assert report.objects == len(world.objects - expected.objects)
        assert report.objects_skipped_recent == len(expected.in_flight)  # the grace period held them
        for build_id in set(world.builds) - builds:
            assert store.get_build_manifest(build_id) is None
            if world.builds[build_id].staging_source:
                assert build_id in repo.staging_dropped

        # Nothing left that a new build could reuse but whose bytes are gone.
        with database.session() as session:
            for step in session.scalars(select(Step).where(Step.reused_from.is_(None))):
                if step.state == "succeeded" and step.input_key != EXPIRED_INPUT_KEY:
                    assert set(world.outputs.get(step.id, [])) <= expected.objects

        again = run_sweep(ctx, dry_run=False, now=NOW)
        assert again.objects == 0 and again.logs == 0 and again.builds_deleted == 0
        assert _rows(database) == (builds, steps)
        assert _stored_objects(store) == expected.objects
        assert again.uploads == 0 and _upload_rows(database) == expected.uploads
    finally:
        shutil.rmtree(root, ignore_errors=True)
