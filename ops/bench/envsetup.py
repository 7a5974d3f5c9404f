"""``make bench`` part 5: per-step setup before and after cached build environments (issue 15).

The same sbuild call as the farm's runner (``sbuild_command``, ``sbuild_environment``, the tmpfs
unpack), on the example packages, side by side:

* **before**: the plain ``mmdebstrap --variant=buildd`` base tarball, ``apt-get update`` of the
  whole Debian mirror in every chroot, every build dependency fetched from the mirror;
* **environment**: the farm's cached environment (toolchain and apt lists preinstalled, no Debian
  index download) with apt fetching through a private apt-cacher-ng, as ``buildfarm start`` runs;
* **farm**: what the runner does now: the step's tarball from :func:`step_tarball` (dependency
  layers; a step the environment already satisfies runs without the archive's apt lists).

Setup is a step's wall time minus sbuild's own ``Build-Time``; CPU is the CPU seconds of the whole
step (less sensitive than wall time to a machine loaded by others).  Bytes from outside: the sizes
apt reports fetching (before), what apt-cacher-ng fetched upstream during the step (otherwise, its
log's ``I`` lines).  Also a package with a larger Build-Depends set (hello-standalone with a C/C++
-dev set in its Build-Depends) as the farm's runner builds it: in the bare environment (sbuild
installs the set), then first build (the dependency layer is made: a miss) vs second build (a
hit), the layer's time counted in the setup.  ``BENCH_RUNS`` (default 2) runs per package and
mode; the median is printed; ``BENCH_ENVSETUP_CASES`` (default ``examples,big``) picks the cases.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from buildfarm.environments import Environment, LayerCache, LayerPolicy, cache_for, spec_for, step_tarball
from buildfarm.local.procs import apt_cache_command, apt_cache_config, free_apt_cache_port, port_open
from buildfarm.model.settings import load_settings
from buildfarm.runners.sbuild import ensure_base_tarball, sbuild_command, sbuild_environment

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ("hello-standalone", "libgreet")
BIG_DEPENDS = (
    "libssl-dev",
    "zlib1g-dev",
    "libpopt-dev",
    "libsqlite3-dev",
    "libxml2-dev",
    "libcurl4-openssl-dev",
)
SBUILD_TIMEOUT_SECONDS = 1800
_FETCHED = re.compile(r"^Fetched ([0-9.]+) ([kMG]?B) in")
_UNITS = {"B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}


class AptCache:
    """A private apt-cacher-ng in ``directory`` (the local profile's package cache)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        for sub in ("conf", "cache", "log"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        self.port = free_apt_cache_port()
        (directory / "conf" / "acng.conf").write_text(apt_cache_config(directory, self.port))
        self.process = subprocess.Popen(
            apt_cache_command(directory / "conf"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("apt-cacher-ng did not start")
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port}"

    def fetched_upstream(self) -> int:
        """Bytes fetched from outside so far (the log's ``I`` lines)."""
        log = self.directory / "log" / "apt-cacher.log"
        if not log.exists():
            return 0
        return sum(
            int(line.split("|")[2]) for line in log.read_text().splitlines() if line.split("|")[1:2] == ["I"]
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def make_dsc(name: str, work: Path, build_depends: tuple[str, ...] = (), source: str = "") -> Path:
    """The .dsc of example ``source`` (default ``name``) renamed ``name``, with ``build_depends`` added."""
    tree = work / name
    shutil.copytree(ROOT / "examples" / (source or name), tree)
    if source:
        for path in (tree / "debian" / "control", tree / "debian" / "changelog"):
            path.write_text(path.read_text().replace(source, name))
    if build_depends:
        control = tree / "debian" / "control"
        extra = ", ".join(build_depends)
        control.write_text(
            control.read_text().replace("debhelper-compat (= 13)", f"debhelper-compat (= 13), {extra}")
        )
    subprocess.run(["dpkg-source", "-b", name], cwd=work, check=True, capture_output=True)
    return next(work.glob(f"{name}_*.dsc"))


@dataclass
class Run:
    """One build: wall seconds, sbuild's Build-Time and Install-Time, bytes apt reported
    fetching, CPU seconds of everything it ran (less sensitive than wall time to a loaded
    machine), and the step's dependency-layer line (farm path only)."""

    wall: float
    build: float
    install: float
    fetched: int
    cpu: float
    layer: str = ""

    @property
    def setup(self) -> float:
        return self.wall - self.build


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def layered_build(env: Environment, dsc: Path, policy: LayerPolicy, proxy: str) -> Run:
    """One build as the farm's sbuild runner does it (:func:`step_tarball`, then sbuild); the
    time and CPU of choosing or making the tarball are counted in."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-layer-") as work:
        scratch = Path(tempfile.mkdtemp(prefix="buildfarm-bench-layer-", dir="/dev/shm"))
        try:
            started, cpu = time.monotonic(), _cpu() + time.process_time()
            tarball = step_tarball(env, dsc, [], policy, work=Path(work), log=lines.append, scratch=scratch)
            chosen, chosen_cpu = time.monotonic() - started, _cpu() + time.process_time() - cpu
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    try:
        run = sbuild_once(tarball.path, dsc, lists=True, proxy=proxy)
    finally:
        tarball.release()
    run.wall += chosen
    run.cpu += chosen_cpu
    run.layer = next((line for line in lines if "dependency layer" in line), "")
    return run


def sbuild_once(tarball: Path, dsc: Path, *, lists: bool, proxy: str | None) -> Run:
    """One sbuild of ``dsc`` in ``tarball``."""
    with tempfile.TemporaryDirectory(prefix="bench-env-") as tmp:
        work = Path(tmp)
        (work / "out").mkdir()
        (work / "home").mkdir()
        chroots = Path(tempfile.mkdtemp(prefix="buildfarm-bench-", dir="/dev/shm"))
        chroots.chmod(0o755)
        env = sbuild_environment(work / "home", proxy) | {"BUILDFARM_SBUILD_TMPDIR": str(chroots)}
        command = sbuild_command(tarball, "bookworm", work / "out", dsc, apt_update=not lists)
        try:
            started, cpu = time.monotonic(), _cpu()
            built = subprocess.run(
                command,
                check=False,
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=SBUILD_TIMEOUT_SECONDS,
            )
            wall, cpu = time.monotonic() - started, _cpu() - cpu
        finally:
            shutil.rmtree(chroots, ignore_errors=True)
        if built.returncode != 0:
            raise SystemExit(f"sbuild failed ({built.returncode}):\n{built.stdout[-3000:]}")
    summary = {
        key: float(value)
        for key, _, value in (line.partition(": ") for line in built.stdout.splitlines())
        if key in ("Build-Time", "Install-Time") and value.strip().isdigit()
    }
    fetched = 0
    for line in built.stdout.splitlines():
        match = _FETCHED.match(line)
        if match:
            fetched += int(float(match.group(1)) * _UNITS[match.group(2)])
    return Run(wall, summary.get("Build-Time", 0.0), summary.get("Install-Time", 0.0), fetched, cpu)


def _mb(n: float) -> str:
    return f"{n / 1e6:8.2f} MB"


def main() -> int:
    settings = load_settings()
    runs = int(os.environ.get("BENCH_RUNS", "2"))
    cases = set(os.environ.get("BENCH_ENVSETUP_CASES", "examples,big").split(","))
    examples = EXAMPLES if "examples" in cases else ()
    if examples:
        base = ensure_base_tarball(
            settings.buildenv.tarball,
            settings.buildenv.distribution,
            settings.buildenv.mirror,
            progress=print,
        )
    env = cache_for(settings).ensure(spec_for(settings), progress=print)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="buildfarm-bench-envsetup-") as tmp:
        work = Path(tmp)
        cache = AptCache(work / "apt-cache")
        try:
            policy = LayerPolicy(LayerCache(work / "layers", 1 << 34), work / "apt-views", 5, cache.url)
            dscs = {name: make_dsc(name, work / "src") for name in examples}
            modes = ("before", "environment", "farm")
            results: dict[str, dict[str, list[Run]]] = {m: {n: [] for n in examples} for m in modes}
            for _ in range(runs):
                for name, dsc in dscs.items():
                    print(f"before: {name} ...", flush=True)
                    results["before"][name].append(sbuild_once(base, dsc, lists=False, proxy=None))
                    print(f"environment: {name} ...", flush=True)
                    results["environment"][name].append(_fetching(cache, env.path, dsc))
                    print(f"farm (dependency layers): {name} ...", flush=True)
                    outside = cache.fetched_upstream()
                    run = layered_build(env, dsc, policy, cache.url)
                    run.fetched = cache.fetched_upstream() - outside
                    results["farm"][name].append(run)
            big_runs = run_big(env, work, cache) if "big" in cases else None
        finally:
            cache.stop()
    load_end = os.getloadavg()[0]
    print()
    print(f"load average {load:.1f} -> {load_end:.1f} ({os.cpu_count()} cores)")
    if examples:
        report_examples(env, runs, results)
    if big_runs:
        report_big(*big_runs)
    return 0


def _fetching(cache: AptCache, tarball: Path, dsc: Path) -> Run:
    """A build in ``tarball`` through the package cache; ``fetched``: what came from outside."""
    outside = cache.fetched_upstream()
    run = sbuild_once(tarball, dsc, lists=True, proxy=cache.url)
    run.fetched = cache.fetched_upstream() - outside
    return run


def run_big(env: Environment, work: Path, cache: AptCache) -> tuple[Run, Run, Run]:
    """The large Build-Depends case: bare environment, layer made, layer hit."""
    big = make_dsc("hello-bigdeps", work / "src", BIG_DEPENDS, source="hello-standalone")
    print("large Build-Depends: in the bare environment (cold package cache) ...", flush=True)
    bare = _fetching(cache, env.path, big)
    policy = LayerPolicy(LayerCache(work / "big-layers", 1 << 34), work / "apt-views", 5, cache.url)
    print("large Build-Depends: first build, the layer is made ...", flush=True)
    outside = cache.fetched_upstream()
    made = layered_build(env, big, policy, cache.url)
    made.fetched = cache.fetched_upstream() - outside
    print("large Build-Depends: second build, a layer hit ...", flush=True)
    hit = layered_build(env, big, policy, cache.url)
    return bare, made, hit


def report_examples(env: Environment, runs: int, results: dict[str, dict[str, list[Run]]]) -> None:
    print(
        f"per-step setup = wall - sbuild Build-Time (CPU: seconds of CPU of the whole step), median of {runs}"
    )
    print(
        "before: plain base tarball, apt-get update of the mirror; environment: the cached environment "
        f"{env.short} ({env.size >> 20} MiB); farm: as the runner does it (dependency layers: the "
        "environment without its archive lists when it has every Build-Depends)"
    )
    modes = list(results)
    print(f"{'package':18}" + "".join(f" {m:>13}" for m in modes) + f" {'CPU ' + ' / '.join(modes):>32}")
    medians: dict[str, list[float]] = {m: [] for m in modes}
    for name in results[modes[0]]:
        setups = {m: statistics.median(r.setup for r in results[m][name]) for m in modes}
        cpus = {m: statistics.median(r.cpu for r in results[m][name]) for m in modes}
        for m in modes:
            medians[m].append(setups[m])
        print(
            f"{name:18}"
            + "".join(f" {setups[m]:12.1f}s" for m in modes)
            + "   "
            + " / ".join(f"{cpus[m]:.1f}s" for m in modes)
        )
    print(f"{'median':18}" + "".join(f" {statistics.median(medians[m]):12.1f}s" for m in modes))
    for m in modes:
        warm = [r.fetched for runs_ in results[m].values() for r in runs_[1:]] or [0]
        print(f"  fetched from outside per step ({m}, warm): {_mb(statistics.median(warm))}")


def report_big(bare: Run, made: Run, hit: Run) -> None:
    print(f"large Build-Depends (+{', '.join(BIG_DEPENDS)}), through the package cache:")
    for label, run in (
        ("no layer (sbuild installs)", bare),
        ("first build (layer made)", made),
        ("second build (layer hit)", hit),
    ):
        print(
            f"  {label:28} setup {run.setup:6.1f} s, sbuild Install-Time {run.install:4.0f} s, "
            f"CPU {run.cpu:6.1f} s, fetched from outside {_mb(run.fetched)}"
        )
    print(f"    {made.layer.removeprefix('buildfarm: ')}")
    print(f"    {hit.layer.removeprefix('buildfarm: ')}")


if __name__ == "__main__":
    sys.exit(main())
