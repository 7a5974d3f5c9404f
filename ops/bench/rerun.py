"""``make bench``'s re-run part: a no-change re-run of a big build, alone, timed again and again.

The state after a big build's first submit, its steps built and its publication (``bigbuild.py``:
PACKAGES trivial packages in process, no farm) is made once and kept, as the first submit packs
every tree (minutes at 5000 packages); each run then re-runs the build on a fresh copy of it: the
no-change re-run ``submit_build`` + the ``advance_build`` that reuses every step and publishes
(issue 16's goal: <= 5 s at 5000 packages).  Each run prints its wall and CPU seconds (this
process and the commands it waited for; a PostgreSQL server's own CPU is not counted) and where
its time went (submit: resolving the trees, planning, recording; advance: loading the open
steps, finding reusables, the release loop, the flush and commit, the publication and its parts).

Settings (environment):

* ``BENCH_PACKAGES``: the build's size (default 5000; 500 for a quick run while developing);
* ``BENCH_RUNS``: re-runs timed (default 3; the first pays the process's warm-up);
* ``BENCH_DATABASE``: ``sqlite`` (default) or a PostgreSQL server's URL
  (``postgresql+psycopg://postgres@127.0.0.1:5432``: a template database holds the snapshot,
  each run gets a copy of it);
* ``BENCH_PROFILE``: a path: each run is profiled (cProfile), its stats written to
  ``<path>.<run>`` (``python -m pstats``, snakeviz);
* ``BENCH_KEEP``: set, the last run's farm (its repository, its database) is kept;
* ``BENCH_SNAPSHOT_DIR``: where snapshots are kept (default ``$XDG_CACHE_HOME/buildfarm-bench``,
  outside the repository), one directory per format version and size; remove it to make them
  again (a snapshot whose steps a re-run no longer reuses says so: input keys changed).

Prints figures; asserts nothing about speed (that is for people).
"""

from __future__ import annotations

import cProfile
import functools
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bigbuild, when loaded by a test
from bigbuild import BigBuild, big_context, big_sources, publish_as_built, reused_steps, submit
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from buildfarm.backends import aptbranch, apttree
from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.engine import advance, bundlefiles
from buildfarm.engine import submit as submitting
from buildfarm.engine.srccache import SourceCache
from buildfarm.engine.workdirs import REMOVALS
from buildfarm.model.manifest import load_manifest

PACKAGES = int(os.environ.get("BENCH_PACKAGES", "5000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
PROFILE = os.environ.get("BENCH_PROFILE", "")
KEEP = bool(os.environ.get("BENCH_KEEP"))
DATABASE = os.environ.get("BENCH_DATABASE", "sqlite")
SNAPSHOT_FORMAT = 3
"""Bump when what the first build leaves changes (2: the bundle listings' combined index; 3: the
source package cache's index of tree keys): the snapshot is then made again, from the older
one's source package cache."""
SNAPSHOT_DIR = Path(
    os.environ.get("BENCH_SNAPSHOT_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "buildfarm-bench"
)
COMPLETE = ".complete"


@dataclass(frozen=True)
class Snapshot:
    """Where one size's snapshot is kept: the source trees (read in place by every run: the tree
    cache knows them by path and stat; shared by every format), the farm state after the first
    build is published, and where this process's runs copy it to."""

    root: Path
    database: str  # "sqlite" or a PostgreSQL server URL

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def kind(self) -> str:
        return "sqlite" if self.database == "sqlite" else "postgresql"

    @property
    def version(self) -> str:
        """The snapshot format, the build options' version (input keys) and the database kind."""
        return f"v{SNAPSHOT_FORMAT}-{submitting.BUILD_OPTIONS_VERSION}-{self.kind}"

    @property
    def kept(self) -> Path:
        return self.root / self.version / "snapshot"

    @property
    def run(self) -> Path:
        return self.root / self.version / f"run-{os.getpid()}"

    def url(self, name: str) -> str:
        """The database URL of ``name``: the snapshot's ("kept", a template) or a run's ("run")."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.run / 'farm.db'}"
        server = make_url(self.database)
        suffix = f"_{os.getpid()}" if name == "run" else ""
        database = f"bench_rerun_{name}_{self.version.replace('-', '_')}_{PACKAGES}{suffix}"
        return server.set(database=database).render_as_string(hide_password=False)


def snapshot_of(count: int) -> Snapshot:
    return Snapshot(SNAPSHOT_DIR / f"rerun-{count}", DATABASE)


def _big(snap: Snapshot, count: int) -> BigBuild:
    """The snapshot's source trees (made the first time)."""
    if not (snap.src / COMPLETE).is_file():
        shutil.rmtree(snap.src, ignore_errors=True)
        big = big_sources(snap.src, count)
        (snap.src / COMPLETE).touch()
        return big
    return BigBuild(snap.src, load_manifest(snap.src / "buildfarm.yaml"))


def _copy(source: Path, target: Path) -> None:
    """``cp -a``: hardlinks between the published trees and the store stay hardlinks."""
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)


def _pg_admin(snap: Snapshot, *statements: str) -> None:
    engine = create_engine(make_url(snap.database).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def _pg_name(snap: Snapshot, name: str) -> str:
    return str(make_url(snap.url(name)).database)


def make_snapshot(snap: Snapshot, count: int) -> None:
    """The first submit, its steps built and published, kept at ``snap.kept``.  Another snapshot
    of the same size (another format or database), when there is one, lends its source package
    and tree caches (the first submit then packs no tree: a minute, not twenty), but nothing the
    publication writes: no database, repository or bundle listing."""
    big = _big(snap, count)
    shutil.rmtree(snap.run, ignore_errors=True)
    other = [p for p in snap.root.glob("*/snapshot") if p != snap.kept and (p / COMPLETE).is_file()]
    if other:
        _copy(other[0], snap.run)
        shutil.rmtree(snap.run / "farm" / "state" / "repos", ignore_errors=True)
        shutil.rmtree(snap.run / "farm" / "state" / "work" / bundlefiles.CACHE_DIR, ignore_errors=True)
        (snap.run / "farm.db").unlink(missing_ok=True)
        (snap.run / COMPLETE).unlink()
    if snap.kind == "postgresql":
        kept = _pg_name(snap, "kept")
        _pg_admin(snap, f'DROP DATABASE IF EXISTS "{kept}"', f'CREATE DATABASE "{kept}"')
    snap.run.mkdir(parents=True, exist_ok=True)
    print(f"  making the snapshot of {count} packages ({snap.kind}) in {snap.root} ...", flush=True)
    started = time.monotonic()
    ctx = big_context(snap.run / "farm", snap.url("kept"))
    first = submit(ctx, big)
    publish_as_built(ctx, first)
    ctx.db.dispose()
    _copy(snap.run, snap.kept)
    (snap.kept / COMPLETE).touch()
    print(f"  snapshot made in {time.monotonic() - started:.0f} s", flush=True)


def restore(snap: Snapshot) -> str:
    """A fresh copy of the snapshot at ``snap.run``; its database URL."""
    _copy(snap.kept, snap.run)
    # The copy's dirty pages written out now, not by the kernel's writeback during the timed run
    # (seen here: the same re-run 5.3 to 7.7 s without it).
    os.sync()
    if snap.kind == "sqlite":
        return snap.url("run")
    run, kept = _pg_name(snap, "run"), _pg_name(snap, "kept")
    _pg_admin(snap, f'DROP DATABASE IF EXISTS "{run}"', f'CREATE DATABASE "{run}" TEMPLATE "{kept}"')
    return snap.url("run")


@dataclass
class Split:
    """Seconds spent in named functions, each wrapped while a run lasts (the outermost call of a
    recursive one only); nested parts print indented under their whole.  Calls in threads (the
    submit's resolving) add up: such a part can take longer than its whole."""

    parts: dict[str, float] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def wrapping(self, targets: list[tuple[object, str, str]]) -> Iterator[None]:
        present = [t for t in targets if hasattr(t[0], t[1])]  # an older tree lacks some
        saved = [(owner, name, getattr(owner, name)) for owner, name, _label in present]
        try:
            for (owner, name, original), (_o, _n, label) in zip(saved, present, strict=True):
                setattr(owner, name, self._timed(label, original))
            yield
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)

    def _timed(self, label: str, original: Callable[..., Any]) -> Callable[..., Any]:
        self.parts.setdefault(label, 0.0)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depths = self._local.__dict__.setdefault("depths", {})
            depth = depths.get(label, 0)
            depths[label] = depth + 1
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depths[label] = depth
                if depth == 0:
                    with self._lock:
                        self.parts[label] += time.perf_counter() - started

        return timed


def _targets() -> list[tuple[object, str, str]]:
    """What a run's split times, labelled ``<phase>/<part>[/<sub-part>]``."""
    return [
        (submitting, "submit_build", "submit"),
        (submitting, "_examine", "submit/resolve trees (tree cache, source cache)"),
        (SourceCache, "known_facts", "submit/resolve trees (tree cache, source cache)/tree facts"),
        (SourceCache, "tree_facts", "submit/resolve trees (tree cache, source cache)/tree facts"),
        (SourceCache, "lookup", "submit/resolve trees (tree cache, source cache)/source cache lookups"),
        (SourceCache, "save_trees", "submit/save tree cache"),
        (submitting, "make_plan", "submit/plan"),
        (submitting, "_build_places", "submit/places"),
        (submitting, "compute_input_keys", "submit/input keys"),
        (advance, "advance_build", "advance"),
        (advance, "open_steps", "advance/open steps"),
        (advance, "find_reusables", "advance/find reusables"),
        (advance, "_outputs_of", "advance/outputs of reusables"),
        (advance, "_resolve", "advance/release loop"),
        (Session, "flush", "advance/flush (ORM)"),  # and submit's one row
        (advance, "_write_released", "advance/write released steps"),
        (advance, "_steps_by_id", "advance/load ready steps"),
        (advance, "publish_build", "advance/publish"),
        (bundlefiles, "listings", "advance/publish/bundle listings"),
        (bundlefiles, "listing", "advance/publish/bundle listings"),  # one each, before the index
        (advance, "_build_outputs", "advance/publish/build outputs"),
        (advance, "_held", "advance/publish/held files"),
        (advance, "_materialize", "advance/publish/materialize packages"),
        (advance, "materialize_sources", "advance/publish/materialize sources"),
        (LocalAptRepository, "publish", "advance/publish/repository"),
        (LocalAptRepository, "_latest_state", "advance/publish/repository/latest's state"),
        (aptbranch, "describe", "advance/publish/repository/describe"),
        (aptbranch, "merge", "advance/publish/repository/merge"),
        (apttree, "place", "advance/publish/repository/place (links)"),
        (apttree, "write_indexes", "advance/publish/repository/indexes"),
        (aptbranch, "write_state", "advance/publish/repository/branch record"),
    ]


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    reused: int
    split: dict[str, float]
    load: float


def rerun_once(snap: Snapshot, big: BigBuild, profile: str = "") -> Run:
    """One no-change re-run on a fresh copy of the snapshot (profiled into ``profile``, if named)."""
    url = restore(snap)
    ctx = big_context(snap.run / "farm", url)
    load = os.getloadavg()[0]
    split = Split()
    with split.wrapping(_targets()):
        profiler = cProfile.Profile() if profile else None
        cpu = _cpu()
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        again = submitting.submit_build(ctx, big.manifest, big.src, "bench")
        advance.advance_build(ctx, again)
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - started
        cpu = _cpu() - cpu
    if profiler is not None:
        profiler.dump_stats(profile)
    REMOVALS.wait()  # the publication's scratch, removed beside the build's end: before the next copy
    reused = reused_steps(ctx, again)
    ctx.db.dispose()
    return Run(wall, cpu, reused, split.parts, load)


def _print_split(runs: list[Run]) -> None:
    """Each part's median over the runs, indented under its whole, with what is left of each whole."""
    wrapped = dict.fromkeys(label for _owner, _name, label in _targets())
    labels = [label for label in wrapped if any(label in r.split for r in runs)]
    print("  where a re-run's time went (median of the runs, s):")

    def show(label: str) -> None:
        depth = label.count("/")
        median = statistics.median(r.split.get(label, 0.0) for r in runs)
        print(f"    {'  ' * depth}{label.rsplit('/', 1)[-1]:<48} {median:6.3f}")
        children = [lab for lab in labels if lab.startswith(label + "/") and lab.count("/") == depth + 1]
        for child in children:
            show(child)
        if children:
            rest = statistics.median(
                r.split.get(label, 0.0) - sum(r.split.get(c, 0.0) for c in children) for r in runs
            )
            print(f"    {'  ' * (depth + 1)}{'(the rest)':<48} {rest:6.3f}")

    for label in labels:
        if "/" not in label:
            show(label)


def main(packages: int = PACKAGES, runs: int = RUNS) -> None:
    if packages < 1 or runs < 1:
        return
    snap = snapshot_of(packages)
    print(f"re-run: a no-change re-run of {packages} packages ({snap.kind}), {runs} times ...", flush=True)
    if not (snap.kept / COMPLETE).is_file():
        make_snapshot(snap, packages)
    big = _big(snap, packages)
    done = []
    for index in range(runs):
        run = rerun_once(snap, big, f"{PROFILE}.{index + 1}" if PROFILE else "")
        done.append(run)
        submit_s, advance_s = run.split["submit"], run.split["advance"]
        print(
            f"  run {index + 1}: {run.wall:5.2f} s wall, {run.cpu:5.2f} s CPU (submit {submit_s:.2f} s, "
            f"advance {advance_s:.2f} s; load {run.load:.1f}; {run.reused} of {packages} reused)",
            flush=True,
        )
        if run.reused != packages:
            print(f"  the snapshot is stale (input keys changed?): remove {snap.root} to make it again")
    print(
        f"  median {statistics.median(r.wall for r in done):.2f} s wall, "
        f"{statistics.median(r.cpu for r in done):.2f} s CPU (goal <= 5 s at 5000 packages)"
    )
    _print_split(done)
    if KEEP:
        print(f"  the last run's farm is kept in {snap.run}")
        return
    shutil.rmtree(snap.run, ignore_errors=True)
    if snap.kind == "postgresql":
        _pg_admin(snap, f'DROP DATABASE IF EXISTS "{_pg_name(snap, "run")}"')


if __name__ == "__main__":
    sys.exit(main())
