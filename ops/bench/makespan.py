"""``make bench``: the farm's makespan on the examples vs the two-node lower bound (issue 15).

``examples/buildfarm.yaml`` (the packages ``make demo`` builds) through a fresh 2-node local farm
with the sbuild runner (nothing reusable), then, from the steps' durations as the farm measured
them (``build show``):

* **makespan**: submit to published, as the user waits for it; also the steps' span (first step
  started to last step finished), which leaves out submit and publish;
* **two-node lower bound**: ``max(critical path through the dependency graph, total step work / 2)``:
  no 2-node schedule of steps lasting that long finishes sooner;
* the same **with the steps' setup removed**: each step counted as sbuild's ``Build-Time`` (from its
  log) instead of its whole duration, i.e. the bound of a farm whose steps took no time to set up
  (unpack, dependencies, dispatch). Left out when a step's log has no ``Build-Time``.

Prints numbers; asserts nothing about speed (that is for people).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import EXAMPLES, cli, farm_env, timed_build, two_node_bound

from buildfarm.environments import cache_for, spec_for
from buildfarm.model.settings import load_settings

_BUILD_TIME = re.compile(r"^Build-Time: (\d+)\s*$", re.MULTILINE)


def build_time(log: str) -> float | None:
    """sbuild's ``Build-Time`` (seconds) in a step's log, None without one."""
    match = _BUILD_TIME.search(log)
    return float(match.group(1)) if match else None


def _seconds(started: str, finished: str) -> float:
    return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()


def report(
    makespan: float, span: float, durations: dict[str, float], depends_on: dict[str, list[str]], label: str
) -> None:
    bound, critical = two_node_bound(durations, depends_on)
    total = sum(durations.values())
    print(f"  {label}:")
    print(
        f"    two-node lower bound {bound:7.1f} s   (critical path {critical:.1f} s, "
        f"total work {total:.1f} s / 2 = {total / 2:.1f} s)"
    )
    print(f"    ratio makespan / bound     {makespan / bound:5.2f}")
    print(f"    ratio step span / bound    {span / bound:5.2f}")


def main() -> int:
    settings = load_settings(runner="sbuild")  # the recipe of the sbuild farm below
    # the farm's environment, made beforehand (shared cache) so that the build does not pay for it
    cache_for(settings).ensure(spec_for(settings), progress=print)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="buildfarm-bench-makespan-") as tmp:
        env = farm_env(Path(tmp) / "state", "sbuild")
        print("makespan: the examples through a fresh 2-node sbuild farm ...", flush=True)
        cli(env, "start", "--runner", "sbuild", "--nodes", "2")
        try:
            makespan, view = timed_build(env, EXAMPLES / "buildfarm.yaml")
            if view["state"] != "succeeded":
                raise SystemExit(f"the example build did not succeed: {view}")
            steps: list[dict[str, object]] = view["steps"]  # type: ignore[assignment]
            logs = {str(s["name"]): cli(env, "build", "logs", str(view["id"]), str(s["name"])) for s in steps}
        finally:
            cli(env, "stop")
    load_end = os.getloadavg()
    print()
    print(
        f"load average (1/5/15 min) {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} -> "
        f"{load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f} ({os.cpu_count()} cores)"
    )
    summarize(makespan, steps, logs)
    return 0


def summarize(makespan: float, steps: list[dict[str, object]], logs: dict[str, str]) -> None:
    """Print the steps, the makespan and the bounds, from ``build show``'s steps and their logs."""
    built = [s for s in steps if s["state"] == "succeeded" and s["duration_seconds"] is not None]
    durations = {str(s["name"]): float(s["duration_seconds"]) for s in built}  # type: ignore[arg-type]
    depends_on = {str(s["name"]): [str(d) for d in s["depends_on"]] for s in steps}  # type: ignore[attr-defined]
    span = _seconds(min(str(s["started_at"]) for s in built), max(str(s["finished_at"]) for s in built))
    builds = {name: build_time(logs[name]) for name in durations}
    print(f"{'step':18} {'depends on':22} {'node':8} {'duration':>9} {'Build-Time':>11} {'setup':>7}")
    for s in built:
        name = str(s["name"])
        seconds, work = durations[name], builds[name]
        print(
            f"{name:18} {','.join(depends_on[name]) or '-':22} {s['node']!s:8} {seconds:8.1f}s "
            + (f"{work:10.0f}s {seconds - work:6.1f}s" if work is not None else f"{'-':>11} {'-':>7}")
        )
    print(f"makespan (submit to published)       {makespan:7.1f} s   ({len(built)} steps built)")
    print(f"steps' span (first start, last end)  {span:7.1f} s")
    report(makespan, span, durations, depends_on, "steps as measured (duration on the node)")
    if all(work is not None for work in builds.values()):
        work_only = {name: float(work or 0) for name, work in builds.items()}
        report(makespan, span, work_only, depends_on, "steps' setup removed (sbuild Build-Time only)")
    else:
        missing = sorted(name for name, work in builds.items() if work is None)
        print(f"  steps' setup removed: not available (no Build-Time in the log of {', '.join(missing)})")


if __name__ == "__main__":
    raise SystemExit(main())
