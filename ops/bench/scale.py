"""``make bench``: the farm beside ``make -j2`` on trivial packages, and a big submit re-run.

* **dispatch**: TRIVIAL independent trivial packages (``dpkg-buildpackage -b`` of a native
  package that installs one file) through a fresh 2-node local farm in host mode, submit to
  published, beside ``make -j2`` running the same ``dpkg-buildpackage`` on copies of the same
  trees (``make`` runs before and after each farm run: the load of a shared machine moves):
  steps/s of each, the ratio (goal: farm within 1.1x of make) of each pair and their median, and
  the farm's overhead per step; then where the median farm run's time went, from its own records
  (submit, the first claim, each step's hold of its node against make's ``dpkg-buildpackage``, a
  node's idle gap between steps, the publication, the CLI noticing), and the CPU seconds a step of
  each side, the farm's by process.
* **submit**: a manifest of BIG packages submitted in process (no farm: the engine with a
  recording dispatcher): the first submit (every tree packed), then, once its steps are marked
  built (each with a small .deb), its publication, then a no-change re-run: submit plus the
  advance that reuses every step and publishes (goal: <= 5 s; ``rerun.py`` times the re-run
  alone, several times, with where its time went).

``BENCH_TRIVIAL`` and ``BENCH_PACKAGES`` change the sizes (default 40 and 5000); ``BENCH_PAIRS``
how many farm runs alternate with make runs (default 2: make, farm, make, farm, make; each farm
run's ratio is against the make runs either side of it, and their median is the figure).  Prints figures
and ratios; asserts nothing about speed (that is for people).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bigbuild, when loaded by a test
from bigbuild import (
    big_context,
    big_sources,
    publish_as_built,
    reused_steps,
    submit,
    trivial_sources,
)

from buildfarm.engine import advance_build

from debpkgs import write_manifest

CLI = [sys.executable, "-m", "buildfarm_cli"]
TRIVIAL = int(os.environ.get("BENCH_TRIVIAL", "40"))
PACKAGES = int(os.environ.get("BENCH_PACKAGES", "5000"))
PAIRS = int(os.environ.get("BENCH_PAIRS", "2"))


def _cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run([*CLI, *args], env=env, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class FarmRun:
    """One farm run of the dispatch part, with the wall-clock instants of its phases (from the
    CLI's clock and the farm's own records: the build's and each step's timestamps)."""

    wall: float
    succeeded: int
    submitted: float  # CLI start -> build row created (CLI start, upload, reading trees, planning)
    first_start: float  # build created -> first step claimed (tickets, Celery, claim)
    held: list[float]  # each step's started -> finished (source fetch, runner, storing outputs)
    gaps: list[float]  # on each node, a step's finish -> the node's next claim
    published: float  # last step finished -> build published (advance, publication)
    noticed: float  # build published -> the CLI returned (the --wait poll, CLI exit)
    cpu: dict[str, float]  # CPU seconds of the run by process (with the commands each waited for)


def _phases(database: Path) -> tuple[dt.datetime, dt.datetime, list[tuple[str, dt.datetime, dt.datetime]]]:
    """(build created, build finished, [(node, started, finished) of each step]) from the farm's database."""
    with sqlite3.connect(database) as db:
        created, finished = db.execute("SELECT created_at, finished_at FROM builds").fetchone()
        steps = db.execute("SELECT node, started_at, finished_at FROM steps ORDER BY started_at").fetchall()
    return (
        _instant(created),
        _instant(finished),
        [(node, _instant(start), _instant(end)) for node, start, end in steps],
    )


def _instant(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def farm_wall(work: Path, src: Path, names: list[str]) -> FarmRun:
    """Submit to published on a fresh 2-node host-mode farm, with where its time went."""
    manifest = write_manifest(src, names, project="bench")
    user = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
    user |= {"BUILDFARM_STATE_DIR": str(work / "state")}  # what a user's commands see after `start`
    env = user | {"BUILDFARM_REPO_PORT": "0", "BUILDFARM_API_PORT": "0", "BUILDFARM_RUNNER": "host"}
    _cli(env, "start", "--runner", "host", "--nodes", "2")  # the farm file records its ports and runner
    try:
        before = _farm_cpu(work / "state")
        began = dt.datetime.now(dt.UTC)
        cli = _children_cpu()
        started = time.monotonic()
        view = json.loads(_cli(user, "--output", "json", "build", "submit", str(manifest), "--wait"))
        wall = time.monotonic() - started
        ended = dt.datetime.now(dt.UTC)
        cpu = {name: used - before.get(name, 0.0) for name, used in _farm_cpu(work / "state").items()}
        cpu["cli"] = _children_cpu() - cli
    finally:
        _cli(env, "stop")
    created, finished, steps = _phases(work / "state" / "buildfarm.db")
    gaps = []
    for node in {node for node, _s, _f in steps}:
        mine = [(s, f) for n, s, f in steps if n == node]
        gaps += [(nxt[0] - cur[1]).total_seconds() for cur, nxt in itertools.pairwise(mine)]
    return FarmRun(
        wall=wall,
        succeeded=sum(1 for s in view["steps"] if s["state"] == "succeeded"),
        submitted=(created - began).total_seconds(),
        first_start=(steps[0][1] - created).total_seconds(),
        held=[(f - s).total_seconds() for _n, s, f in steps],
        gaps=gaps,
        published=(finished - max(f for _n, _s, f in steps)).total_seconds(),
        noticed=(ended - finished).total_seconds(),
        cpu=cpu,
    )


def _children_cpu() -> float:
    """CPU seconds of this process's waited-for children so far (``make``, the CLI)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _farm_cpu(state: Path) -> dict[str, float]:
    """CPU seconds each farm process used so far, and its children's (a node's builds, the API's
    packing): those it waited for and those still running (the API's long-lived preloaded Perls,
    with the runs they waited for), fields 14-17 of ``/proc/<pid>/stat``, by the farm's pid
    files."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for pidfile in (state / "run").glob("*.pid"):
        try:
            pid = pidfile.read_text().strip()
            fields = _stat_fields(pid)
        except (OSError, ValueError):
            continue
        used[pidfile.stem] = sum(fields[11:13]) / tick
        children = sum(fields[13:15])
        for child in _live_children(pid):
            with contextlib.suppress(OSError, ValueError):
                children += sum(_stat_fields(child)[11:15])
        used[f"{pidfile.stem}'s children"] = children / tick
    return used


def _stat_fields(pid: str) -> list[int]:
    """The numeric fields of ``/proc/<pid>/stat`` after the command (index 11: utime)."""
    text = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return [int(field) if field.lstrip("-").isdigit() else 0 for field in text]


def _live_children(pid: str) -> set[str]:
    """The pids of the running children of ``pid`` (of each of its threads)."""
    out: set[str] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out.update((task / "children").read_text().split())
    return out


def make_wall(
    work: Path, src: Path, names: list[str], *, source: bool = False
) -> tuple[float, list[float], float]:
    """Seconds of ``make -j2`` running ``dpkg-buildpackage -b`` in a copy of every tree, each
    package's own seconds (the time stamps around its command, as the farm's steps have) and the
    CPU seconds of it all.  With ``source`` each rule also makes the package's source package
    (``dpkg-source -b``, as the farm does at submit to publish it): the second baseline only.

    Each ``dpkg-buildpackage`` runs in a session of its own (``setsid``), as the farm's runner
    runs each build command: with the kernel's autogroup scheduling a session is one CPU-share
    group, so on a loaded machine two builds in make's one session got half the share of the
    farm's two and make looked 20-30 % slower per package than the same command in the farm."""
    work.mkdir(parents=True)
    rules = [f"all: {' '.join(f'{n}.done' for n in names)}\n"]
    for name in names:
        shutil.copytree(src / name, work / name)
        rules.append(
            f"{name}.done:\n\tdate +%s.%N >{name}.start\n"
            + (f"\tsetsid -w dpkg-source -b {name} >{name}.src.log 2>&1\n" if source else "")
            + f"\tcd {name} && setsid -w dpkg-buildpackage -b -uc -us >../{name}.log 2>&1\n"
            + "\tdate +%s.%N >$@\n"
        )
    (work / "Makefile").write_text("".join(rules))
    cpu = _children_cpu()
    started = time.monotonic()
    subprocess.run(["make", "-j2", "-s"], cwd=work, check=True)
    wall = time.monotonic() - started
    cpu = _children_cpu() - cpu
    each = [float((work / f"{n}.done").read_text()) - float((work / f"{n}.start").read_text()) for n in names]
    return wall, each, cpu


def _print_phases(run: FarmRun, each: list[float]) -> None:
    """Where the farm's time went: the fixed cost at the start and the end, and per step."""
    dpkg = statistics.mean(each)
    held = statistics.mean(run.held)
    gap = statistics.mean(run.gaps) if run.gaps else 0.0
    print("  where the farm's time went:")
    print(f"    start: submit to the build recorded (CLI, upload, reading trees, plan) {run.submitted:.2f} s")
    print("           (trees not packed before are packed after it, while the first steps build)")
    print(f"           to the first step claimed {run.first_start:.2f} s")
    print(f"    a step: held its node {held:.2f} s, against {dpkg:.2f} s of make's dpkg-buildpackage")
    print(f"            (fetch, unpack, runner start, storing outputs: {held - dpkg:+.2f} s)")
    print(f"            node idle between steps {gap:.3f} s (finish, log, advance, next ticket, claim)")
    print(f"    end:   last step -> published {run.published:.2f} s; -> the CLI returned {run.noticed:.2f} s")
    # less moved by a loaded machine than the wall: the steps' own slowing is taken out
    print(f"    in all: wall beyond the steps' holds on 2 nodes {run.wall - sum(run.held) / 2:.2f} s")


def big_submit(work: Path, count: int) -> tuple[float, float, float, float, int]:
    """(first submit s, its publish s, no-change re-run submit s, its advance s, steps reused).

    The first build is published (as if built) before the re-run, as a real re-run follows a
    published build: the re-run's publication finds its packages in the repository already.
    ``rerun.py`` times the re-run alone, again and again, from a kept copy of this state."""
    big = big_sources(work / "src", count)
    ctx = big_context(work / "farm", f"sqlite:///{work / 'farm.db'}")
    started = time.monotonic()
    first = submit(ctx, big)
    first_s = time.monotonic() - started
    started = time.monotonic()
    publish_as_built(ctx, first)
    publish_s = time.monotonic() - started
    started = time.monotonic()
    again = submit(ctx, big)
    submit_s = time.monotonic() - started
    started = time.monotonic()
    advance_build(ctx, again)
    advance_s = time.monotonic() - started
    reused = reused_steps(ctx, again)
    ctx.db.dispose()
    return first_s, publish_s, submit_s, advance_s, reused


def dispatch(work: Path, trivial: int, pairs: int = PAIRS) -> None:
    """The dispatch part: ``make -j2`` and the farm alternated, ``pairs`` farm runs each between
    two make runs (make, farm, make, farm, make: the load of a shared machine moves, so each farm
    run is measured against the mean of the make runs either side of it, and the median of those
    ratios is the figure); then where the median farm run's time and CPU went."""
    src = work / "trivial"
    names = trivial_sources(src, trivial, "triv")
    print(
        f"dispatch: {trivial} trivial packages, host runner, 2 nodes, beside make -j2, "
        f"{pairs} pair(s) alternated ...",
        flush=True,
    )
    load = os.getloadavg()[0]
    makes = [make_wall(work / "make-0", src, names)]
    runs: list[FarmRun] = []
    for pair in range(1, pairs + 1):
        runs.append(farm_wall(work / f"farm-{pair}", src, names))
        makes.append(make_wall(work / f"make-{pair}", src, names))
    walls, cpus = [], []
    print(f"  load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    for pair, run in enumerate(runs):
        (before, _e, cpu_b), (after, _e2, cpu_a) = makes[pair], makes[pair + 1]
        made, made_cpu = (before + after) / 2, (cpu_b + cpu_a) / 2
        walls.append(run.wall / made)
        cpus.append(sum(run.cpu.values()) / made_cpu)
        print(
            f"  pair {pair + 1}: make -j2 {before:.1f} s | farm {run.wall:.1f} s ({run.succeeded} built)"
            f" | make -j2 {after:.1f} s; ratio wall {walls[-1]:.2f}, CPU {cpus[-1]:.2f}"
        )
    print(
        f"  ratio farm / make, median of {pairs}: wall {statistics.median(walls):.2f} (goal <= 1.1), "
        f"CPU {statistics.median(cpus):.2f}"
    )
    # the details of the median run (by its wall ratio) against the mean of all make runs
    run = runs[sorted(range(pairs), key=walls.__getitem__)[(pairs - 1) // 2]]
    made = statistics.mean(m[0] for m in makes)
    make_cpu = statistics.mean(m[2] for m in makes)
    each = [e for m in makes for e in m[1]]
    farmed, succeeded = run.wall, run.succeeded
    print(f"  median run: make -j2 {made:6.1f} s (mean of all), {trivial / made:5.2f} steps/s")
    print(f"              farm     {farmed:6.1f} s, {succeeded / farmed:5.2f} steps/s ({succeeded} built)")
    print(f"  farm overhead a step (2 at a time): {2 * (farmed - made) / trivial:.2f} s")
    _print_phases(run, each)
    farm_cpu = sum(run.cpu.values())
    print(
        f"  CPU seconds a step: make {make_cpu / trivial:.2f}, farm {farm_cpu / trivial:.2f} ("
        + ", ".join(f"{k} {v / trivial:.3f}" for k, v in sorted(run.cpu.items()) if v >= 0.01)
        + f"); ratio {farm_cpu / make_cpu:.2f}"
    )
    # A second baseline, not the goal's: make doing the farm's work, a source package made too.
    both, _each, both_cpu = make_wall(work / "make-source", src, names, source=True)
    print(
        f"  second baseline, make -j2 also making each source package (dpkg-source -b, as the farm "
        f"publishes it): {both:.1f} s, CPU {both_cpu / trivial:.2f} a step; farm (median run) / it: "
        f"wall {farmed / both:.2f}, CPU {farm_cpu / both_cpu:.2f} (load {os.getloadavg()[0]:.1f})"
    )


def main(trivial: int = TRIVIAL, packages: int = PACKAGES, *, farm: bool = True) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        if farm and trivial > 0:
            dispatch(work, trivial)
        if packages < 1:
            return
        print(f"submit: {packages} packages in process ...", flush=True)
        first, publish, submit, advance, reused = big_submit(work / "big", packages)
        print(f"  first submit (every tree packed): {first:6.1f} s; its publication {publish:.1f} s")
        print(
            f"  no-change re-run: submit {submit:.1f} s + advance {advance:.1f} s = {submit + advance:.1f} s"
        )
        print(f"    ({reused} of {packages} steps reused; goal <= 5 s)")


if __name__ == "__main__":
    main()
