"""``make bench`` part 5: per-step setup before and after cached build environments (issue 15).

The same sbuild call as the farm's runner (``sbuild_command``, ``sbuild_environment``, the tmpfs
unpack), on the example packages, side by side:

* **before**: the plain ``mmdebstrap --variant=buildd`` base tarball, ``apt-get update`` of the
  whole Debian mirror in every chroot, every build dependency fetched from the mirror;
* **environment**: the farm's cached environment (toolchain and apt lists preinstalled, no Debian
  index download) with apt fetching through a private apt-cacher-ng, as ``buildfarm start`` runs;
* **layers**: the step's tarball from :func:`step_tarball` (dependency layers; a step the
  environment already satisfies runs without the archive's apt lists), sbuild's apt resolver
  installing what is left (the runner before it turned the resolver off);
* **farm**: what the runner does now: as *layers*, and a step whose tarball already has every
  Build-Depends runs sbuild with no resolver at all (``install_deps=False``: no dummy package,
  no apt run);
* **unshare**: the ``unshare`` runner itself (:class:`~buildfarm.runners.unshare.UnshareRunner`,
  the same tarball choice in its builder environment, the farm's recipe plus python3): a builder
  pod's ``buildfarm-step`` in one user-namespace chroot, on the step's source-package tarball as
  the farm hands it over; its chroot an overlay on the tarball unpacked once (on tmpfs);
* **unshare-tar**: the same runner unpacking the tarball for each step instead (``overlay=False``).

Setup is a step's wall time minus sbuild's own ``Build-Time`` (whole seconds), or minus the
dpkg-buildpackage time buildfarm-step prints (unshare); CPU is the CPU seconds of the whole
step (less sensitive than wall time to a machine loaded by others).  Bytes from outside: the sizes
apt reports fetching (before), what apt-cacher-ng fetched upstream during the step (otherwise, its
log's ``I`` lines).  Also a package with a larger Build-Depends set (hello-standalone with a C/C++
-dev set in its Build-Depends) as the farm's runner builds it: in the bare environment (sbuild
installs the set), then first build (the dependency layer is made: a miss) vs second build (a
hit), the layer's time counted in the setup.  ``BENCH_RUNS`` (default 2) runs per package and
mode; the median is printed; ``BENCH_ENVSETUP_CASES`` (default ``examples,big``) picks the cases.
Where the farm's setup goes is printed too, from the time each line of sbuild's log arrived:
sbuild's start, unpacking the tarball, the chroot session up to the build dependencies, installing
them, and everything else outside Build-Time (source unpack, checks, .changes, package contents,
cleanup; sbuild 0.85's unshare mode runs each of these as a command in a fresh namespace); and
the unshare runner's: choosing the tarball, unpacking it in the namespace up to buildfarm-step's
first line, buildfarm-step up to dpkg-buildpackage (source check, ``dpkg-source -x``), and after
it (outputs archive, checking it, removing the tree).
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
from dataclasses import dataclass, field
from pathlib import Path

from buildfarm.environments import (
    Environment,
    LayerCache,
    LayerPolicy,
    builder_spec,
    cache_for,
    spec_for,
    step_tarball,
)
from buildfarm.local.procs import apt_cache_command, apt_cache_config, free_apt_cache_port, port_open
from buildfarm.model.debsource import pack_files
from buildfarm.model.settings import load_settings
from buildfarm.runners.base import StepJob
from buildfarm.runners.sbuild import ensure_base_tarball, sbuild_command, sbuild_environment
from buildfarm.runners.unshare import UnshareRunner

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
MODES = ("before", "environment", "layers", "farm", "unshare", "unshare-tar")
"""The example packages' columns; ``BENCH_ENVSETUP_MODES`` picks some (comma-separated)."""
_BUILD_TOOK = re.compile(r"^buildfarm-step: dpkg-buildpackage took ([0-9.]+) s$")
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
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def setup(self) -> float:
        return self.wall - self.build


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def layered_build(
    env: Environment, dsc: Path, policy: LayerPolicy, proxy: str, *, resolver: bool = False
) -> Run:
    """One build as the farm's sbuild runner does it (:func:`step_tarball`, then sbuild; with
    ``resolver`` sbuild's apt resolver runs even when the tarball has every Build-Depends); the
    time and CPU of choosing or making the tarball are counted in."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-layer-") as work:
        scratch = Path(tempfile.mkdtemp(prefix="buildfarm-bench-layer-", dir="/dev/shm"))
        try:
            started, cpu = time.monotonic(), _cpu() + time.process_time()
            chosen_tarball = step_tarball(
                env, dsc, [], policy, work=Path(work), log=lines.append, scratch=scratch
            )
            chosen, chosen_cpu = time.monotonic() - started, _cpu() + time.process_time() - cpu
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    install_deps = resolver or not chosen_tarball.satisfied
    try:
        run = sbuild_once(chosen_tarball.path, dsc, lists=True, proxy=proxy, install_deps=install_deps)
    finally:
        chosen_tarball.release()
    run.wall += chosen
    run.cpu += chosen_cpu
    run.phases["choose tarball"] = chosen
    run.layer = next((line for line in lines if "dependency layer" in line), "")
    return run


def sbuild_once(
    tarball: Path, dsc: Path, *, lists: bool, proxy: str | None, install_deps: bool = True
) -> Run:
    """One sbuild of ``dsc`` in ``tarball``, each line of its log timed as it arrives."""
    with tempfile.TemporaryDirectory(prefix="bench-env-") as tmp:
        work = Path(tmp)
        (work / "out").mkdir()
        (work / "home").mkdir()
        chroots = Path(tempfile.mkdtemp(prefix="buildfarm-bench-", dir="/dev/shm"))
        chroots.chmod(0o755)
        env = sbuild_environment(work / "home", proxy) | {"BUILDFARM_SBUILD_TMPDIR": str(chroots)}
        command = sbuild_command(
            tarball, "bookworm", work / "out", dsc, apt_update=not lists, install_deps=install_deps
        )
        timed: list[tuple[float, str]] = []
        try:
            started, cpu = time.monotonic(), _cpu()
            with subprocess.Popen(
                command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as process:
                assert process.stdout is not None
                for line in process.stdout:
                    timed.append((time.monotonic() - started, line.rstrip("\n")))
                returncode = process.wait(SBUILD_TIMEOUT_SECONDS)
            wall, cpu = time.monotonic() - started, _cpu() - cpu
        finally:
            shutil.rmtree(chroots, ignore_errors=True)
        if returncode != 0:
            tail = "\n".join(line for _, line in timed[-60:])
            raise SystemExit(f"sbuild failed ({returncode}):\n{tail}")
    lines = [line for _, line in timed]
    summary = {
        key: float(value)
        for key, _, value in (line.partition(": ") for line in lines)
        if key in ("Build-Time", "Install-Time") and value.strip().isdigit()
    }
    fetched = 0
    for line in lines:
        match = _FETCHED.match(line)
        if match:
            fetched += int(float(match.group(1)) * _UNITS[match.group(2)])
    build = summary.get("Build-Time", 0.0)
    run = Run(wall, build, summary.get("Install-Time", 0.0), fetched, cpu)
    run.phases = phases(timed, wall, build)
    return run


def unshare_once(runner: UnshareRunner, dsc: Path) -> Run:
    """One step of ``dsc`` through the unshare runner, as a farm worker runs it (the source
    package packed as the farm hands it over), each log line timed as it arrives."""
    with tempfile.TemporaryDirectory(prefix="bench-unshare-") as tmp:
        work = Path(tmp)
        tarball = work / "source.tar.gz"
        names = [dsc, *(dsc.parent / line.split()[-1] for line in _dsc_files(dsc))]
        tarball.write_bytes(pack_files(names))
        (work / "step").mkdir()
        timed: list[tuple[float, str]] = []
        started, cpu = time.monotonic(), _cpu() + time.process_time()
        job = StepJob(
            1,
            dsc.name.split("_")[0],
            1,
            tarball,
            work / "step",
            [],
            lambda line: timed.append((time.monotonic() - started, line)),
            timeout_seconds=SBUILD_TIMEOUT_SECONDS,
        )
        result = runner.run(job)
        wall, cpu = time.monotonic() - started, _cpu() + time.process_time() - cpu
    if not result.ok:
        tail = "\n".join(line for _, line in timed[-60:])
        raise SystemExit(f"the unshare runner failed ({result.error}):\n{tail}")
    build = next((float(m.group(1)) for _, line in timed if (m := _BUILD_TOOK.match(line))), 0.0)
    run = Run(wall, build, 0.0, 0, cpu)
    run.layer = next((line for _, line in timed if "dependency layer" in line), "")
    run.phases = unshare_phases(timed, wall, build)
    return run


def _dsc_files(dsc: Path) -> list[str]:
    """The ``Files:`` lines of a .dsc (md5, size, name)."""
    lines = dsc.read_text().splitlines()
    files = []
    for line in lines[lines.index("Files:") + 1 :]:
        if not line.startswith(" "):
            break
        files.append(line)
    return files


_UNSHARE_MARKS = (
    ("choose tarball", lambda line: "dependency layer" in line),
    ("unpack, namespace", lambda line: line.startswith("buildfarm-step: ")),
    ("source check, dpkg-source -x", lambda line: "dpkg-buildpackage -b" in line),
    ("build", lambda line: bool(_BUILD_TOOK.match(line))),
)


def unshare_phases(timed: list[tuple[float, str]], wall: float, build: float) -> dict[str, float]:
    """Seconds of each part of an unshare step outside dpkg-buildpackage, from when its log
    lines came (:data:`_UNSHARE_MARKS`); the rest after dpkg-buildpackage is "outputs, cleanup"."""
    found: dict[str, float] = {}
    at, marks = 0.0, iter(_UNSHARE_MARKS)
    name, matches = next(marks)
    for when, line in timed:
        if matches(line):
            found[name], at = when - at, when
            step = next(marks, None)
            if step is None:
                break
            name, matches = step
    found.pop("build", None)  # dpkg-buildpackage itself: not setup
    found["outputs, cleanup"] = max(wall - at, 0.0)
    return found


_MARKS = (
    ("sbuild start", lambda line: line.startswith("Unpacking /")),
    # sbuild says nothing while tar runs, nor while it adds its users and groups
    ("unpack, chroot users", lambda line: True),
    ("resolver setup, source in", lambda line: line.startswith("| Install package build dependencies")),
    ("build dependencies", lambda line: line.startswith("| Check architectures")),
)


def phases(timed: list[tuple[float, str]], wall: float, build: float) -> dict[str, float]:
    """Seconds of each part of an sbuild run outside its Build-Time, from when its log lines came:
    up to each mark in :data:`_MARKS` in turn; the rest (after the build dependencies, less
    sbuild's Build-Time) is "rest of the session"."""
    found: dict[str, float] = {}
    at, marks = 0.0, iter(_MARKS)
    name, matches = next(marks)
    for when, line in timed:
        if matches(line):
            found[name], at = when - at, when
            step = next(marks, None)
            if step is None:
                break
            name, matches = step
    found["rest of the session"] = max(wall - at - build, 0.0)
    return found


def _mb(n: float) -> str:
    return f"{n / 1e6:8.2f} MB"


def main() -> int:
    settings = load_settings(runner="sbuild")  # the sbuild columns' recipe; unshare's is builder_spec's
    runs = int(os.environ.get("BENCH_RUNS", "2"))
    cases = set(os.environ.get("BENCH_ENVSETUP_CASES", "examples,big").split(","))
    examples = EXAMPLES if "examples" in cases else ()
    modes = [m for m in os.environ.get("BENCH_ENVSETUP_MODES", ",".join(MODES)).split(",") if m in MODES]
    base = settings.buildenv.tarball
    if examples and "before" in modes:
        ensure_base_tarball(
            settings.buildenv.tarball,
            settings.buildenv.distribution,
            settings.buildenv.mirror,
            progress=print,
        )
    env = cache_for(settings).ensure(spec_for(settings), progress=print)
    builder_env = None
    if {"unshare", "unshare-tar"} & set(modes):
        builder_env = cache_for(settings).ensure(builder_spec(spec_for(settings)), progress=print)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="buildfarm-bench-envsetup-") as tmp:
        work = Path(tmp)
        cache = AptCache(work / "apt-cache")
        try:
            policy = LayerPolicy(LayerCache(work / "layers", 1 << 34), work / "apt-views", 5, cache.url)
            chroots = Path(tempfile.mkdtemp(prefix="buildfarm-bench-unshare-", dir="/dev/shm"))
            unshare, unshare_tar = (
                UnshareRunner(
                    None,
                    settings.buildenv.distribution,
                    chroots,
                    environments=cache_for(settings),
                    spec=builder_spec(spec_for(settings)),
                    apt_proxy=cache.url,
                    layers=policy,
                    overlay=overlay,
                )
                for overlay in (True, False)
            )
            dscs = {name: make_dsc(name, work / "src") for name in examples}
            if {"unshare", "unshare-tar"} & set(modes) and dscs:  # as the layers mode does the farm's
                print("unshare: making its lean layer and unpacked tree once ...", flush=True)
                for dsc in dscs.values():
                    unshare_once(unshare, dsc)
            results: dict[str, dict[str, list[Run]]] = {m: {n: [] for n in examples} for m in modes}
            for _ in range(runs):
                for name, dsc in dscs.items():
                    for mode in modes:
                        print(f"{mode}: {name} ...", flush=True)
                        outside = cache.fetched_upstream()
                        if mode == "before":
                            run = sbuild_once(base, dsc, lists=False, proxy=None)
                        elif mode == "environment":
                            run = sbuild_once(env.path, dsc, lists=True, proxy=cache.url)
                        elif mode in ("unshare", "unshare-tar"):
                            run = unshare_once(unshare if mode == "unshare" else unshare_tar, dsc)
                        else:
                            run = layered_build(env, dsc, policy, cache.url, resolver=mode == "layers")
                        if mode != "before":  # apt's own count for the plain tarball
                            run.fetched = cache.fetched_upstream() - outside
                        results[mode][name].append(run)
            big_runs = run_big(env, work, cache) if "big" in cases else None
        finally:
            cache.stop()
            shutil.rmtree(chroots, ignore_errors=True)
    load_end = os.getloadavg()[0]
    print()
    print(f"load average {load:.1f} -> {load_end:.1f} ({os.cpu_count()} cores)")
    if examples:
        report_examples(env, runs, results, builder_env)
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


def report_examples(
    env: Environment, runs: int, results: dict[str, dict[str, list[Run]]], builder_env: Environment | None
) -> None:
    print(
        "per-step setup = wall - sbuild Build-Time (whole seconds; unshare: - dpkg-buildpackage's time) "
        f"(CPU: seconds of CPU of the whole step), median of {runs}"
    )
    print(
        "before: plain base tarball, apt-get update of the mirror; environment: the cached environment "
        f"{env.short} ({env.size >> 20} MiB); layers: dependency layers (the environment without its "
        "archive lists when it has every Build-Depends), sbuild's apt resolver; farm: as the sbuild runner "
        "does it now (layers, and no resolver at all when the tarball has every Build-Depends)"
    )
    if builder_env is not None:
        print(
            f"unshare: the unshare runner (buildfarm-step in one user namespace) in the builder environment "
            f"{builder_env.short} ({builder_env.size >> 20} MiB), same layers, an overlay on the tarball "
            "unpacked once; unshare-tar: the same, unpacking the tarball for each step"
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
    for m in ("layers", "farm", "unshare", "unshare-tar"):
        every = [r for runs_ in results.get(m, {}).values() for r in runs_]
        if every:
            parts = ", ".join(
                f"{part} {statistics.median(r.phases.get(part, 0.0) for r in every):.1f}s"
                for part in every[0].phases
            )
            print(f"  where the setup goes ({m}, median of every step): {parts}")


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
