"""``make bench``: the farm's overhead on the example build, measured side by side.

Three numbers, all on this machine, same build environment, same packages:

* **farm**: ``buildfarm build submit examples/buildfarm.yaml --wait`` on a fresh 2-node local
  farm in sbuild mode (nothing reusable), submit to published;
* **by hand**: the same ``dpkg-source -b`` + ``sbuild`` calls run one after another in
  dependency order, each later build given a flat repository (apt-ftparchive + http.server) of
  the packages built before it — what a person would script without a farm;
* **two-node bound**: the least wall time two nodes could take given the by-hand step times,
  ``max(critical path, total / 2)``.

Plus the cost of a re-run where every step is reused, and the engine's per-step overhead with
trivial packages in host mode. Prints ratios; asserts nothing about speed (that is for people).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from buildfarm.environments import cache_for, spec_for  # noqa: E402
from buildfarm.model.debsource import upstream_files_beside  # noqa: E402
from buildfarm.model.planner import make_plan, read_source_info  # noqa: E402
from buildfarm.model.settings import load_settings  # noqa: E402
from buildfarm.runners.sbuild import SBUILD_CONFIG  # noqa: E402

from debpkgs import make_package, write_manifest  # noqa: E402

EXAMPLES = ROOT / "examples"
# the same sbuild configuration and tmpfs unpack the farm's runner uses: only the farm differs
SBUILD_ENV = {"SBUILD_CONFIG": str(SBUILD_CONFIG), "BUILDFARM_SBUILD_TMPDIR": "/dev/shm", "LC_ALL": "C.UTF-8"}
CLI = [sys.executable, "-m", "buildfarm_cli"]


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run([*CLI, *args], env=env, check=True, capture_output=True, text=True).stdout


def farm_env(state: Path, runner: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
    return env | {
        "BUILDFARM_STATE_DIR": str(state),
        "BUILDFARM_REPO_PORT": "0",
        "BUILDFARM_API_PORT": "0",
        "BUILDFARM_RUNNER": runner,
    }


def timed_build(env: dict[str, str], manifest: Path) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    view = json.loads(cli(env, "--output", "json", "build", "submit", str(manifest), "--wait"))
    return time.monotonic() - started, view


def example_plan() -> Any:
    """The plan of the example packages (directories with debian/control: not examples/images/)."""
    packages = [d for d in sorted(EXAMPLES.iterdir()) if (d / "debian" / "control").is_file()]
    return make_plan([(d.name, read_source_info(d, d.name), d.name) for d in packages])


def by_hand(base: Path, work: Path) -> dict[str, float]:
    """Sequential sbuild of the examples, dependency order, with a growing flat repository."""
    plan = example_plan()
    repo = work / "repo"
    repo.mkdir(parents=True)
    (repo / "Packages").write_text("")
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "8799", "--directory", str(repo)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    times: dict[str, float] = {}
    try:
        time.sleep(0.5)
        for name in plan.order():
            src = work / name
            home = src / "home"
            home.mkdir(parents=True)
            shutil.copytree(EXAMPLES / plan.steps[name].origin, src / "src")
            step = plan.steps[name]
            for upstream in upstream_files_beside(EXAMPLES / step.origin, name, step.version):
                shutil.copyfile(upstream, src / upstream.name)  # dpkg-source -b looks beside the tree
            started = time.monotonic()
            subprocess.run(["dpkg-source", "-b", "src"], cwd=src, check=True, capture_output=True)
            out = src / "out"
            out.mkdir()
            dsc = next(src.glob("*.dsc"))
            subprocess.run(
                [
                    "sbuild",
                    "--chroot-mode=unshare",
                    f"--chroot={base}",
                    "--dist=bookworm",
                    "--no-run-lintian",
                    "--no-run-piuparts",
                    "--no-run-autopkgtest",
                    "--no-apt-update",  # the environment carries the mirror's lists, as on the farm
                    "--nolog",
                    f"--build-dir={out}",
                    "--arch-all",
                    "--extra-repository=deb [trusted=yes] http://127.0.0.1:8799/ ./",
                    str(dsc),
                ],
                check=True,
                capture_output=True,
                env=os.environ | SBUILD_ENV | {"HOME": str(home)},
            )
            times[name] = time.monotonic() - started
            for deb in out.glob("*.deb"):
                shutil.copy(deb, repo)
            packages = subprocess.run(
                ["apt-ftparchive", "packages", "."], cwd=repo, check=True, capture_output=True
            ).stdout
            (repo / "Packages").write_bytes(packages)
    finally:
        server.terminate()
        server.wait()
    return times


def critical_path(times: dict[str, float], depends_on: dict[str, list[str]]) -> float:
    """The longest chain of ``times`` through the dependency graph (a dependency outside
    ``depends_on``, e.g. one reused, costs nothing)."""
    finish: dict[str, float] = {}

    def finished(name: str) -> float:
        if name not in finish:
            deps = [d for d in depends_on.get(name, []) if d in times]
            finish[name] = times[name] + max((finished(d) for d in deps), default=0.0)
        return finish[name]

    return max((finished(name) for name in times), default=0.0)


def two_node_bound(times: dict[str, float], depends_on: dict[str, list[str]]) -> tuple[float, float]:
    """(The least wall time two nodes could take for steps lasting ``times``, the critical path):
    ``max(critical path, total / 2)``."""
    critical = critical_path(times, depends_on)
    return max(critical, sum(times.values()) / 2), critical


def engine_overhead(work: Path) -> tuple[float, float, int]:
    """Wall time for 20 trivial independent packages in host mode vs their summed build times."""
    src = work / "trivial"
    names = [f"triv{i:02d}" for i in range(20)]
    for name in names:
        make_package(src, name)
    manifest = write_manifest(src, names, project="bench")
    env = farm_env(work / "host-state", "host")
    cli(env, "start", "--runner", "host", "--nodes", "2")
    try:
        wall, view = timed_build(env, manifest)
    finally:
        cli(env, "stop")
    steps = view["steps"]  # type: ignore[index]
    return wall, sum(float(s["duration_seconds"] or 0) for s in steps), len(steps)  # type: ignore[union-attr]


def main() -> int:
    settings = load_settings(runner="sbuild")  # sbuild by hand and the sbuild farm: its recipe
    # the farm's own build environment (toolchain and apt lists inside, issue 15), as its runner uses
    base = cache_for(settings).ensure(spec_for(settings), progress=print).path
    with tempfile.TemporaryDirectory(prefix="buildfarm-bench-") as tmp:
        work = Path(tmp)
        print("engine overhead: 20 trivial packages, host runner, 2 nodes ...", flush=True)
        wall, busy, count = engine_overhead(work)
        print(
            f"  wall {wall:.1f} s for {count} steps whose builds took {busy:.1f} s in all "
            f"(2 nodes: bound {busy / 2:.1f} s); overhead {(wall - busy / 2) / count:.2f} s a step"
        )

        print("by hand: sequential sbuild of the examples ...", flush=True)
        hand = by_hand(base, work / "hand")
        total = sum(hand.values())
        depends_on = {name: list(step.depends_on) for name, step in example_plan().steps.items()}
        bound, critical = two_node_bound(hand, depends_on)
        for name, seconds in hand.items():
            print(f"  {name:18} {seconds:6.1f} s")

        print("farm: the same examples through a fresh 2-node sbuild farm ...", flush=True)
        env = farm_env(work / "sbuild-state", "sbuild")
        cli(env, "start", "--runner", "sbuild", "--nodes", "2")
        try:
            farm_wall, view = timed_build(env, EXAMPLES / "buildfarm.yaml")
            assert view["state"] == "succeeded", view
            rerun_wall, rerun = timed_build(env, EXAMPLES / "buildfarm.yaml")
            reused = sum(1 for s in rerun["steps"] if s["state"] == "reused")  # type: ignore[index,union-attr]
        finally:
            cli(env, "stop")
    print()
    print(f"{'by hand, one after another':32} {total:7.1f} s")
    print(f"{'two-node lower bound':32} {bound:7.1f} s   (critical path {critical:.1f} s)")
    print(f"{'farm, 2 nodes, sbuild':32} {farm_wall:7.1f} s")
    print(f"{'farm re-run (all reused)':32} {rerun_wall:7.1f} s   ({reused} steps reused)")
    print(f"ratio farm / by hand:            {farm_wall / total:.2f}")
    print(f"ratio farm / two-node bound:     {farm_wall / bound:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
