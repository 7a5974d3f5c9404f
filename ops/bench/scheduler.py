"""``make bench``: the scheduler on the real dispatch code — makespan, fairness, release wait, speed.

A farm of ``NODES`` fake runners (node loops in one process, driven by an event queue on a
virtual clock: nothing sleeps) on a real database (a SQLite file; PostgreSQL when
``BENCH_DATABASE_URL`` names a server, e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``:
a scratch database is made on it and dropped).  Every step goes through the code a worker runs:
a ticket is used with :func:`buildfarm.engine.steps.claim_next` (the fair-share choice, the
lease, the charge), a finished step with :func:`buildfarm.engine.steps.finish_step` (the charge
corrected) and :func:`buildfarm.engine.advance.advance_build` (dependents released, their
tickets sent).  Only the build itself is fake: a step "runs" for its drawn duration of virtual
time.  The engine reads "now" through :func:`buildfarm.state.models.use_clock`.

The work: ``STEPS`` steps of ``TENANTS`` tenants (project/user, project weights 1, 2, 4), five
tenants per build kind (release, on-demand, nightly, personal: one priority class each), builds
of ``BUILD_STEPS`` steps with some dependency chains, durations log-normal (median 60 s, a tail
of long builds), all submitted at once; then, half-way, one more release build of one step into
the full queue.  Printed:

* **makespan / lower bound**, the bound ``max(critical path, total work / nodes)``;
* **Jain's fairness index** of node-seconds / weight across the tenants of each class, over the
  time every tenant of the class had steps left to start (1.0 is exact);
* the **release wait** (submitted to claimed) against the median step;
* **dispatch throughput**: steps / wall second through the real database path (claim + finish
  + advance), and the per-step overhead split into those parts;
* **concurrent dispatch throughput**: the simulation makes every claim in turn, in one process,
  as if the farm had one dispatcher; real nodes claim at once.  So ``WORKERS`` processes, each
  looping claim -> finish -> advance on steps that take no time (the same functions, one
  database, the same builds of ``CONCURRENT_STEPS`` steps), measure steps / wall second too:
  printed beside the simulation's figure, never instead of it.

Prints numbers; asserts nothing (``tests/integration/test_bench_smoke.py`` runs it small).
"""

from __future__ import annotations

import datetime as dt
import heapq
import multiprocessing
import os
import queue
import random
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.base import BuildRef, Fetch, PackageFile, StoredPackage
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.engine.advance import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.steps import Claim, claim_next, finish_step
from buildfarm.model.settings import load_settings
from buildfarm.model.types import AptSource, BuildState, StepKind, StepState
from buildfarm.state.db import Database, upgrade
from buildfarm.state.models import Build, Step, use_clock
from buildfarm.wiring import Wiring

NODES = 50
STEPS = 10_000
TENANTS = 20
BUILD_STEPS = 100
KINDS = ("release", "on-demand", "nightly", "personal")
WEIGHTS = (1.0, 2.0, 4.0)
CHAIN_EVERY = 10  # every 10th step of a build depends on the one before it (chains of 2)
SEED = 16
WORKERS = 2  # processes of the concurrent measurement: one per core of the goal's machine
CONCURRENT_STEPS = 4_000
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Config:
    nodes: int = NODES
    steps: int = STEPS
    tenants: int = TENANTS
    build_steps: int = BUILD_STEPS
    seed: int = SEED


@dataclass
class Result:
    makespan: float
    bound: float
    critical_path: float
    total_work: float
    jain: dict[str, float]  # build kind -> Jain's index of its tenants
    release_wait: float
    median_step: float
    claims: dict[int, int]  # step id -> times claimed
    steps: int
    wall_seconds: float
    cpu_seconds: float  # this process's CPU (with SQLite: the database's too)
    claim_seconds: float
    finish_seconds: float
    advance_seconds: float
    dialect: str
    tickets_unused: int = 0
    server_cpu_seconds: float | None = None  # PostgreSQL's backends' CPU over the pass (local server)
    table_state: str = ""  # PostgreSQL: what its statistics say of the steps table over the pass


class _SimRepo(LocalAptRepository):
    """The apt repository of a farm whose steps make no packages: staging and publishing are free."""

    def stage(self, build: BuildRef, packages: Sequence[StoredPackage], fetch: Fetch) -> AptSource:
        return AptSource(f"file:///sim/staging/{build.build_id}")

    def drop_staging(self, build: BuildRef) -> None:
        return None

    def publish(self, build: BuildRef, packages: list[PackageFile], move_latest: bool) -> AptSource:
        return AptSource(f"file:///sim/{build.build_id}")


@dataclass
class _Dispatcher:
    """Tickets in the order sent (every ticket claims the best ready step anyway) and builds to advance."""

    tickets: deque[int] = field(default_factory=deque)
    advances: list[int] = field(default_factory=list)

    def advance(self, build_id: int) -> None:
        self.advances.append(build_id)

    def run_step(self, step_id: int, attempt: int, kind: str, node: str | None = None) -> None:
        self.tickets.append(step_id)

    def check(self) -> None:
        return None

    def prepare_environment(self) -> None:
        return None


@contextmanager
def scratch_database(state: Path) -> Iterator[str]:
    """A SQLite file under ``state``, or a fresh database on ``BENCH_DATABASE_URL``'s server."""
    server = os.environ.get("BENCH_DATABASE_URL")
    if not server:
        yield f"sqlite:///{state / 'bench.db'}"
        return
    name = f"bench_scheduler_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _context(
    state: Path, database_url: str, weights: dict[str, float], *, migrate: bool = True
) -> FarmContext:
    if migrate:
        upgrade(database_url)
    settings = load_settings(
        state_dir=state / "state",
        database_url=database_url,
        runner="host",
        redis_url="redis://unused.invalid:1/0",
        fair_share_weights=weights,
    )
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return FarmContext(
        settings=settings,
        db=Database(database_url),
        store=FsArtifactStore(settings.state_dir / "artifacts"),
        repo=_SimRepo(settings.state_dir / "repos", settings.repository.url),
        dispatcher=_Dispatcher(),
        parts=Wiring(settings),
    )


def _duration(rng: random.Random) -> float:
    return min(4 * 3600.0, rng.lognormvariate(4.1, 0.9))


def _add_build(
    ctx: FarmContext, tenant: int, kind: str, count: int, *, rng: random.Random, now: dt.datetime
) -> tuple[int, dict[int, float], dict[int, int | None]]:
    """A running build of ``count`` pending steps (every ``CHAIN_EVERY``-th after the one
    before): its id, each step's duration and the step it waits for."""
    with ctx.db.session() as session:
        build = Build(
            project=f"project{tenant}",
            branch="main",
            kind=kind,
            user=f"user{tenant}",
            state=BuildState.RUNNING,
            manifest={},
            environment_id="env",
            created_at=now,
        )
        session.add(build)
        session.flush()
        names = [f"b{build.id}-s{i}" for i in range(count)]
        steps = [
            Step(
                build_id=build.id,
                name=names[i],
                version="1.0",
                origin="sim",
                kind=StepKind.IMAGE,  # no source bundle to publish
                source_sha256=f"{build.id:032x}{i:032x}",
                tree_hash=f"{build.id:032x}{i:032x}",
                input_key=f"{build.id:032x}{i:032x}",
                depends_on=[names[i - 1]] if i and i % CHAIN_EVERY == 0 else [],
                priority=1 if (i + 1) % CHAIN_EVERY == 0 and i + 1 < count else 0,
                state=StepState.PENDING,
            )
            for i in range(count)
        ]
        session.add_all(steps)
        session.flush()
        ids = [s.id for s in steps]
        build_id = build.id
    durations = {step_id: _duration(rng) for step_id in ids}
    after = {ids[i]: (ids[i - 1] if i and i % CHAIN_EVERY == 0 else None) for i in range(count)}
    return build_id, durations, after


def jain(values: list[float]) -> float:
    squares = sum(v * v for v in values)
    return sum(values) ** 2 / (len(values) * squares) if squares else 1.0


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_BACKENDS = text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
_STEPS_STATS = text(
    "SELECT n_live_tup, n_dead_tup, autovacuum_count + vacuum_count, autoanalyze_count + analyze_count"
    " FROM pg_stat_user_tables WHERE relname = 'steps'"
)


def _backends_cpu(ctx: FarmContext) -> dict[int, float] | None:
    """PostgreSQL: the CPU seconds used so far by each server process of the bench's database,
    read from ``/proc`` (None on SQLite, or when the server is not on this machine)."""
    if ctx.db.engine.dialect.name != "postgresql":
        return None
    with ctx.db.statements() as connection:
        pids = list(connection.scalars(_BACKENDS))
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None  # not a process of this machine: a remote server
        used[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    return used


def _steps_stats(ctx: FarmContext) -> tuple[int, int, int, int] | None:
    """PostgreSQL: the steps table's live and dead rows, vacuums and analyzes so far."""
    if ctx.db.engine.dialect.name != "postgresql":
        return None
    with ctx.db.statements() as connection:
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        row = connection.execute(_STEPS_STATS).first()
    return None if row is None else (row[0], row[1], row[2], row[3])


def _table_state(before: tuple[int, int, int, int] | None, after: tuple[int, int, int, int] | None) -> str:
    if before is None or after is None:
        return ""
    return (
        f"steps table: {after[0]} live, {after[1]} dead rows at the end; {after[2] - before[2]} vacuums, "
        f"{after[3] - before[3]} analyzes during the pass"
    )


def run(config: Config, database_url: str, state: Path) -> Result:
    rng = random.Random(config.seed)
    tenants = list(range(config.tenants))
    weights = {f"project{t}": WEIGHTS[t % len(WEIGHTS)] for t in tenants}
    kind_of = {t: KINDS[t % len(KINDS)] for t in tenants}
    ctx = _context(state, database_url, weights)
    dispatcher = ctx.dispatcher
    assert isinstance(dispatcher, _Dispatcher)
    clock = [0.0]

    def now() -> dt.datetime:
        return T0 + dt.timedelta(seconds=clock[0])

    durations: dict[int, float] = {}
    after: dict[int, int | None] = {}
    step_tenant: dict[int, int] = {}
    per_tenant = config.steps // config.tenants
    builds: list[int] = []
    for tenant in tenants:
        left = per_tenant
        while left:
            size = min(left, config.build_steps)
            build_id, d, a = _add_build(ctx, tenant, kind_of[tenant], size, rng=rng, now=now())
            durations |= d
            after |= a
            step_tenant |= dict.fromkeys(d, tenant)
            builds.append(build_id)
            left -= size
    release_at: float | None = None
    release_step = -1
    claims: dict[int, int] = {}
    started: dict[int, float] = {}
    left_of = {t: per_tenant for t in tenants}
    drained_at: dict[int, float] = {}  # tenant -> when it started its last step
    claim_s = finish_s = advance_s = 0.0
    events: list[tuple[float, int, str, int]] = []  # (time, seq, what, node)
    running: dict[int, Claim] = {}
    idle = list(range(config.nodes))
    seq = 0
    server_before, stats_before = _backends_cpu(ctx), _steps_stats(ctx)
    wall, cpu = time.perf_counter(), time.process_time()
    with use_clock(now):
        tick = time.perf_counter()
        for build_id in builds:
            advance_build(ctx, build_id)
        advance_s += time.perf_counter() - tick
        median = sorted(durations.values())[len(durations) // 2]
        while True:
            while idle and dispatcher.tickets:
                node = idle.pop()
                tick = time.perf_counter()
                claim = claim_next(ctx, dispatcher.tickets.popleft(), f"node{node}", frozenset())
                claim_s += time.perf_counter() - tick
                if claim is None:
                    idle.append(node)
                    continue
                claims[claim.step_id] = claims.get(claim.step_id, 0) + 1
                started[claim.step_id] = clock[0]
                owner = step_tenant.get(claim.step_id)
                if owner is not None:
                    left_of[owner] -= 1
                    if not left_of[owner]:
                        drained_at[owner] = clock[0]
                running[node] = claim
                seq += 1
                heapq.heappush(events, (clock[0] + durations[claim.step_id], seq, "finish", node))
            if release_at is None and len(claims) >= len(durations) // 2:
                release_at = clock[0] + 1.0  # into the full queue, between two finishes
                seq += 1
                heapq.heappush(events, (release_at, seq, "release", -1))
            if not events:
                break
            clock[0], _seq, what, node = heapq.heappop(events)
            if what == "release":
                build_id, d, a = _add_build(ctx, 0, "release", 1, rng=rng, now=now())
                durations |= d
                after |= a
                release_step = next(iter(d))
                tick = time.perf_counter()
                advance_build(ctx, build_id)
                advance_s += time.perf_counter() - tick
                continue
            claim = running.pop(node)
            tick = time.perf_counter()
            finish_step(ctx, claim, [], None)
            finish_s += time.perf_counter() - tick
            tick = time.perf_counter()
            while dispatcher.advances:
                advance_build(ctx, dispatcher.advances.pop(0))
            dispatcher.advance(claim.build_id)  # what the worker does after finishing
            while dispatcher.advances:
                advance_build(ctx, dispatcher.advances.pop(0))
            advance_s += time.perf_counter() - tick
            idle.append(node)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server_after, stats_after = _backends_cpu(ctx), _steps_stats(ctx)
    server = (
        sum(used - server_before.get(pid, 0.0) for pid, used in server_after.items())
        if server_before is not None and server_after is not None
        else None
    )
    dialect = ctx.db.engine.dialect.name
    ctx.db.dispose()
    makespan = clock[0]
    finish = {s: started[s] + durations[s] for s in started}
    critical: dict[int, float] = {}
    for step_id in sorted(durations):  # a step's dependency has a lower id
        before = after[step_id]
        critical[step_id] = durations[step_id] + (critical[before] if before is not None else 0.0)
    if release_step in durations and release_at is not None:
        critical[release_step] += release_at
    total = sum(durations.values())
    critical_path = max(critical.values())
    shares: dict[str, float] = {}
    for kind in KINDS:
        members = [t for t in tenants if kind_of[t] == kind]
        if not members:
            continue
        mine = [s for s in started if step_tenant.get(s) in members]
        begin = min(started[s] for s in mine)
        end = min(drained_at.get(t, makespan) for t in members)
        used = dict.fromkeys(members, 0.0)
        for s in mine:
            overlap = min(finish[s], end) - max(started[s], begin)
            if overlap > 0:
                used[step_tenant[s]] += overlap
        shares[kind] = jain([used[t] / weights[f"project{t}"] for t in members]) if end > begin else 1.0
    return Result(
        makespan=makespan,
        bound=max(critical_path, total / config.nodes),
        critical_path=critical_path,
        total_work=total,
        jain=shares,
        release_wait=started.get(release_step, makespan) - (release_at or 0.0),
        median_step=median,
        claims=claims,
        steps=len(durations),
        wall_seconds=wall,
        cpu_seconds=cpu,
        claim_seconds=claim_s,
        finish_seconds=finish_s,
        advance_seconds=advance_s,
        dialect=dialect,
        tickets_unused=len(dispatcher.tickets),
        server_cpu_seconds=server,
        table_state=_table_state(stats_before, stats_after),
    )


@dataclass
class Concurrent:
    workers: int
    claims: list[int]  # the step ids claimed, by every worker
    wall_seconds: float  # from the first worker's start to the last one's end
    dialect: str


def _submit(ctx: FarmContext, config: Config, rng: random.Random) -> list[int]:
    """The work of :func:`run` (all submitted at once): the builds' ids."""
    builds = []
    per_tenant = config.steps // config.tenants
    for tenant in range(config.tenants):
        left = per_tenant
        while left:
            size = min(left, config.build_steps)
            build_id, _d, _a = _add_build(ctx, tenant, KINDS[tenant % len(KINDS)], size, rng=rng, now=T0)
            builds.append(build_id)
            left -= size
    return builds


_UNFINISHED = select(func.count()).where(
    Step.state.in_((StepState.PENDING, StepState.READY, StepState.RUNNING))
)


@dataclass(frozen=True)
class _Node:
    """What a worker of :func:`concurrent` needs: the farm's database, its state and its ticket."""

    database_url: str
    state: Path
    weights: dict[str, float]
    ticket: int  # any ready step's: a ticket claims the best ready step of its pool


Report = tuple[list[int], float, float]
"""A worker's claimed steps, when it began and when it ended (``time.perf_counter``)."""


def _worker(node: _Node, index: int, start: Barrier, out: Queue[Report]) -> None:
    """One node of :func:`concurrent`: claim, finish at once, advance, until no step is left."""
    ctx = _context(node.state, node.database_url, node.weights, migrate=False)
    claimed: list[int] = []
    start.wait()
    began = time.perf_counter()
    while True:
        claim = claim_next(ctx, node.ticket, f"worker{index}", frozenset())
        if claim is None:
            with ctx.db.session() as session:
                if not session.scalar(_UNFINISHED):
                    break
            continue  # a chained step waits for its dependency, which another worker is finishing
        claimed.append(claim.step_id)
        finish_step(ctx, claim, [], None)
        advance_build(ctx, claim.build_id)
    out.put((claimed, began, time.perf_counter()))
    ctx.db.dispose()


def concurrent(config: Config, database_url: str, state: Path, workers: int = WORKERS) -> Concurrent:
    """``workers`` processes dispatching the same builds at once, on the real functions."""
    weights = {f"project{t}": WEIGHTS[t % len(WEIGHTS)] for t in range(config.tenants)}
    ctx = _context(state, database_url, weights)
    builds = _submit(ctx, config, random.Random(config.seed))
    for build_id in builds:
        advance_build(ctx, build_id)
    dispatcher = ctx.dispatcher
    assert isinstance(dispatcher, _Dispatcher)
    ticket = dispatcher.tickets[0]
    dialect = ctx.db.engine.dialect.name
    ctx.db.dispose()  # no connection crosses the fork
    processes = multiprocessing.get_context("fork")
    start, out = processes.Barrier(workers), processes.Queue()
    node = _Node(database_url, state, weights, ticket)
    children = [processes.Process(target=_worker, args=(node, i, start, out)) for i in range(workers)]
    for child in children:
        child.start()
    done: list[Report] = []
    while len(done) < workers:
        try:
            done.append(out.get(timeout=1.0))
        except queue.Empty:
            if any(child.exitcode for child in children):  # it reports nothing: do not wait for it
                for child in children:
                    child.kill()
                raise RuntimeError("a dispatch worker failed (its error is printed above)") from None
    for child in children:
        child.join()
    claims = [step_id for claimed, _began, _ended in done for step_id in claimed]
    wall = max(ended for *_c, ended in done) - min(began for _c, began, _e in done)
    return Concurrent(workers, claims, wall, dialect)


def report(config: Config, result: Result) -> None:
    print(
        f"scheduler simulation on the real claim/finish/advance path ({result.dialect}): {config.nodes} "
        f"nodes, {result.steps} steps, {config.tenants} tenants in {len(KINDS)} kinds"
    )
    print(
        f"  makespan {result.makespan:9.0f} s   lower bound {result.bound:9.0f} s   ratio "
        f"{result.makespan / result.bound:.3f} (goal <= 1.05)"
    )
    print(
        f"    bound = max(critical path {result.critical_path:.0f} s, total work "
        f"{result.total_work:.0f} s / {config.nodes} = {result.total_work / config.nodes:.0f} s)"
    )
    for kind, index in result.jain.items():
        print(f"  Jain's fairness index, {kind:<9} tenants (node-s / weight): {index:.4f} (goal >= 0.95)")
    print(
        f"  release step submitted into the full queue waited {result.release_wait:.1f} s "
        f"(median step {result.median_step:.0f} s; goal <= one step)"
    )
    report_dispatch(result)


def report_dispatch(result: Result, label: str = "dispatch") -> None:
    """The speed of one pass: steps / s, the split, the CPU of each side, the load."""
    done = len(result.claims)
    per_step = result.wall_seconds / max(done, 1)
    claim, finish, advance = (
        part / max(done, 1) * 1000
        for part in (result.claim_seconds, result.finish_seconds, result.advance_seconds)
    )
    print(
        f"  {label}: {done} steps in {result.wall_seconds:.1f} s wall = {done / result.wall_seconds:.0f} "
        f"steps/s (goal >= 300); per step {per_step * 1000:.2f} ms = claim "
        f"{claim:.2f} + finish {finish:.2f} + advance {advance:.2f} ms (+ simulation)"
    )
    server = (
        f"; the database server's {result.server_cpu_seconds / max(done, 1) * 1000:.2f} ms"
        if result.server_cpu_seconds is not None
        else " (the database server's not counted)"
        if result.dialect == "postgresql"
        else " (SQLite's included)"
    )
    print(f"    CPU a step: this process {result.cpu_seconds / max(done, 1) * 1000:.2f} ms{server}")
    if result.table_state:
        print(f"    {result.table_state}")
    print(f"    load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.stdout.flush()


def report_median(label: str, rates: list[float]) -> None:
    """Each pass's steps / s and their median: one pass alone varies too much to be trusted
    (on PostgreSQL by a third from run to run, with the other load of the machine, its plans
    and its statistics)."""
    ordered = sorted(rates)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    print(
        f"  {label}, {len(rates)} passes: {', '.join(f'{r:.0f}' for r in rates)} steps/s; "
        f"median {median:.0f} (min {ordered[0]:.0f}, max {ordered[-1]:.0f})"
    )
    sys.stdout.flush()


def report_concurrent(result: Concurrent) -> None:
    done = len(result.claims)
    print(
        f"  concurrent dispatch ({result.dialect}; not the simulation: {result.workers} worker processes "
        f"at once, each looping claim -> finish -> advance on steps that take no time): {done} steps in "
        f"{result.wall_seconds:.1f} s wall = {done / result.wall_seconds:.0f} steps/s"
    )
    print(f"  load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.stdout.flush()


PASSES = int(os.environ.get("BENCH_PASSES", "3"))
"""Passes of each measurement, each on a database of its own: every pass is printed, then the
median (``BENCH_PASSES`` to change; 1 for a quick look)."""


def main() -> None:
    config = Config()
    rates = []
    for index in range(PASSES):
        with tempfile.TemporaryDirectory() as state, scratch_database(Path(state)) as url:
            result = run(config, url, Path(state))
        if index == 0:
            report(config, result)  # the schedule is the same in every pass; its speed is not
        else:
            report_dispatch(result, f"dispatch, pass {index + 1}")
        rates.append(len(result.claims) / result.wall_seconds)
    if PASSES > 1:
        report_median("dispatch", rates)
    rates = []
    for _index in range(PASSES):
        with tempfile.TemporaryDirectory() as state, scratch_database(Path(state)) as url:
            together = concurrent(Config(steps=CONCURRENT_STEPS), url, Path(state))
        report_concurrent(together)
        rates.append(len(together.claims) / together.wall_seconds)
    if PASSES > 1:
        report_median(f"concurrent dispatch ({WORKERS} workers)", rates)


if __name__ == "__main__":
    main()
