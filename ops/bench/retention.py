"""``make bench`` (retention): choosing what expires among 100 000 builds, and what deleting costs.

Two measurements on a real SQLite build state, the real fs artifact store and the real local
APT repository (sweeps through :func:`buildfarm.retention.sweep.run_sweep`):

* **selection**: 100 000 finished nightly builds over 20 branches, each with a package step that
  made two files and a step that reused an earlier build's; 1 % of them are old enough to expire.
  Times :func:`~buildfarm.retention.sweep.select_expired` (a dry run's database work) with the
  schema as migrated, and again with two indexes the sweep's queries would use
  (``steps(name, state, build_id)`` for "the last success/failure of a package on a branch",
  ``steps(source_sha256)`` for "is this tarball still named"): they are created here only, in
  the benchmark's database, to show their effect (no migration adds them).
* **deletion**: the same 1 000 expired builds (their objects and logs really on disk) next to
  1 000 and then 100 000 kept builds: the whole sweep's time should hardly move, since deletion
  work is per expired build and every query is an ``IN`` over the expired ones.

The selection is timed on PostgreSQL too (the machine's server, or ``BUILDFARM_BENCH_POSTGRES``;
a scratch database is created and dropped).  Prints the figures and their ratios; asserts
nothing about speed (that is for people).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.engine.context import FarmContext
from buildfarm.model.settinggroups import RetentionSettings
from buildfarm.model.settings import load_settings
from buildfarm.retention import run_sweep, select_expired
from buildfarm.state.db import Database, upgrade
from buildfarm.state.models import Base
from buildfarm.wiring import Wiring

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from farmkit import RecordingDispatcher  # noqa: E402

NOW = dt.datetime.now(dt.UTC)
BRANCHES = [(f"proj{p}", f"branch{b}") for p in range(5) for b in range(4)]
EXPIRED = 1_000
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
"""The machine's PostgreSQL (BUILDFARM_BENCH_POSTGRES overrides it); a scratch database is used."""


def _sha(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def populate(db: Database, store: FsArtifactStore | None, kept: int, expired: int) -> None:
    """``expired`` old builds first (ids 1..), then ``kept`` recent ones; rows inserted in bulk.

    With a store, the expired builds' objects and logs are written to disk (dated 40 days ago)."""
    builds, steps, outputs = [], [], []
    total = expired + kept
    step_id = 0
    old = (NOW - dt.timedelta(days=40)).timestamp()
    for n in range(1, total + 1):
        project, branch = BRANCHES[n % len(BRANCHES)]
        age = dt.timedelta(days=30) if n <= expired else dt.timedelta(days=13 * (total - n) / total)
        finished = NOW - age
        builds.append(
            {
                "id": n,
                "project": project,
                "branch": branch,
                "kind": "nightly",
                "user": "sched",
                "state": "succeeded",
                "manifest": {},
                "environment_id": "env",
                "created_at": finished - dt.timedelta(minutes=10),
                "finished_at": finished,
            }
        )
        own_key, own_source = _sha("key", n), _sha("src", n)
        step_id += 1
        producer = step_id
        steps.append(_step(producer, n, "pkg-own", own_key, own_source, None, 1))
        for suffix in ("deb", "buildinfo"):
            outputs.append(
                {
                    "step_id": producer,
                    "attempt": 1,
                    "filename": f"own_{n}.{suffix}",
                    "sha256": _sha(suffix, n),
                    "size": 4096,
                }
            )
        # and the package every build of the branch reuses from the branch's first build
        first = 1 + (n - 1) % len(BRANCHES)
        if n != first:
            step_id += 1
            first_step = first  # builds 1..20 have one step each: step ids 1..20 are theirs
            log_key = f"logs/{first}/pkg-own/1.log"
            steps.append(
                _step(
                    step_id, n, "pkg-shared", _sha("key", first), _sha("src", first), first_step, 0, log_key
                )
            )
        if store is not None and n <= expired:
            for sha in (own_source, _sha("deb", n), _sha("buildinfo", n)):
                path = store.object_path(sha)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"x" * 4096)
                os.utime(path, (old, old))
            log = store.root / "logs" / str(n) / "pkg-own" / "1.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_bytes(b"log line\n" * 100)
    with db.session() as session:
        for chunk in range(0, len(builds), 20_000):
            session.execute(insert(Base.metadata.tables["builds"]), builds[chunk : chunk + 20_000])
        for chunk in range(0, len(steps), 20_000):
            session.execute(insert(Base.metadata.tables["steps"]), steps[chunk : chunk + 20_000])
        for chunk in range(0, len(outputs), 20_000):
            session.execute(insert(Base.metadata.tables["step_outputs"]), outputs[chunk : chunk + 20_000])


def _step(  # noqa: PLR0917 (a row's columns)
    step_id: int,
    build_id: int,
    name: str,
    key: str,
    source: str,
    reused: int | None,
    attempt: int,
    log_key: str | None = None,
) -> dict[str, object]:
    return {
        "id": step_id,
        "build_id": build_id,
        "name": name,
        "version": "1",
        "origin": "bench",
        "source_sha256": source,
        "tree_hash": "0" * 64,
        "input_key": key,
        "depends_on": [],
        "state": "succeeded",
        "reused_from": reused,
        "attempt": attempt,
        "log_key": log_key or f"logs/{build_id}/{name}/{attempt}.log",
    }


def context(work: Path, db: Database) -> FarmContext:
    settings = load_settings(
        state_dir=work / "state", database_url=db.url, redis_url="redis://unused.invalid:1/0", repo_port=1
    )
    return FarmContext(
        settings=settings,
        db=db,
        store=FsArtifactStore(work / "artifacts"),
        repo=LocalAptRepository(work / "repos", settings.repository.url),
        dispatcher=RecordingDispatcher(),
        parts=Wiring(settings),
    )


def fresh_db(work: Path, name: str) -> Database:
    url = f"sqlite:///{work / name}.db"
    upgrade(url)
    return Database(url)


def time_selection(db: Database, rounds: int = 3) -> tuple[float, int]:
    policy = RetentionSettings()  # the default retention settings are the policy
    best, found = float("inf"), 0
    for _ in range(rounds):
        with db.session() as session:
            started = time.perf_counter()
            selection = select_expired(session, policy, NOW)
            best = min(best, time.perf_counter() - started)
            found = len(selection.plan.expired_builds)
    return best, found


def postgres_selection(server_url: str) -> tuple[float, int] | str:
    """The selection figures on PostgreSQL, in a scratch database of ``server_url``'s server."""
    name = f"buildfarm_bench_retention_{os.getpid()}"
    server = make_url(server_url)
    try:
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        return f"skipped: PostgreSQL at {server.render_as_string()} unreachable ({exc.orig})"
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        db = Database(url)
        populate(db, None, kept=100_000 - EXPIRED, expired=EXPIRED)
        with db.engine.begin() as connection:
            connection.execute(text("ANALYZE"))
        plain, found = time_selection(db)
        db.dispose()
        return plain, found
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def time_sweep(work: Path, kept: int, expired: int = EXPIRED) -> tuple[float, float, int, int]:
    db = fresh_db(work, f"sweep-{kept}")
    ctx = context(work / f"farm-{kept}", db)
    assert isinstance(ctx.store, FsArtifactStore)
    populate(db, ctx.store, kept=kept, expired=expired)
    started = time.perf_counter()
    report = run_sweep(ctx, dry_run=False, now=NOW)
    return time.perf_counter() - started, report.selection_seconds, len(report.build_ids), report.objects


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="buildfarm-bench-retention-") as tmp:
        work = Path(tmp)
        print("retention benchmark (SQLite and PostgreSQL; fs store, local APT repository)")
        db = fresh_db(work, "select")
        started = time.perf_counter()
        populate(db, None, kept=100_000 - EXPIRED, expired=EXPIRED)
        took = time.perf_counter() - started
        print(f"  100 000 builds (two steps each, one reused), rows inserted in {took:.1f} s")
        plain, found = time_selection(db)
        print(f"  selection of {found} expired among 100 000 (SQLite): {plain:.3f} s")
        pg = postgres_selection(os.environ.get("BUILDFARM_BENCH_POSTGRES", DEFAULT_POSTGRES))
        if isinstance(pg, str):
            print(f"  PostgreSQL selection {pg}")
        else:
            print(f"  PostgreSQL: selection of {pg[1]} expired among 100 000: {pg[0]:.3f} s")
        small = time_sweep(work, kept=1_000)
        large = time_sweep(work, kept=100_000)
        print(f"  sweep of {EXPIRED} expired builds ({small[3]} objects deleted):")
        print(f"    next to   1 000 kept builds: {small[0]:.3f} s (selection {small[1]:.3f} s)")
        print(f"    next to 100 000 kept builds: {large[0]:.3f} s (selection {large[1]:.3f} s)")
        print(
            f"    kept builds x100 -> sweep time x{large[0] / small[0]:.2f}, "
            f"deletion (sweep minus selection) x{(large[0] - large[1]) / (small[0] - small[1]):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
