"""``make bench`` part 5: per-step setup before and after cached build environments (issue 15).

The same sbuild call as the farm's runner (``sbuild_command``, ``sbuild_environment``, the tmpfs
unpack), on the example packages, side by side:

* **before**: the plain ``mmdebstrap --variant=buildd`` base tarball, ``apt-get update`` of the
  whole Debian mirror in every chroot, every build dependency fetched from the mirror;
* **after**: the farm's cached environment (toolchain and apt lists preinstalled, no Debian
  index download) with apt fetching through a private apt-cacher-ng, as ``buildfarm start`` runs.

Setup is a step's wall time minus sbuild's own ``Build-Time``.  Bytes from outside: the sizes
apt reports fetching (before), what apt-cacher-ng fetched upstream during the step (after, its
log's ``I`` lines).  Also a package with a larger Build-Depends set (hello-standalone with a C/C++
-dev set in its Build-Depends) as the farm's runner builds it: in the bare environment (sbuild
installs the set, warm package cache), then first build (the dependency layer is made: a miss)
vs second build (a hit), the layer's time counted in the setup.  ``BENCH_RUNS`` (default
2) runs per package and mode; the median is printed; ``BENCH_ENVSETUP_CASES`` (default
``examples,big``) picks the cases.  Prints numbers; asserts nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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


def layered_build(env: Environment, dsc: Path, policy: LayerPolicy, proxy: str) -> tuple[float, float, str]:
    """(wall seconds from choosing the tarball to sbuild's end, Build-Time, layer log line) of
    one build as the farm's sbuild runner does it (:func:`step_tarball`, then sbuild)."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-layer-") as work:
        scratch = Path(tempfile.mkdtemp(prefix="buildfarm-bench-layer-", dir="/dev/shm"))
        try:
            started = time.monotonic()
            tarball = step_tarball(env, dsc, [], policy, work=Path(work), log=lines.append, scratch=scratch)
            chosen = time.monotonic() - started
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    wall, build, _ = sbuild_once(tarball, dsc, lists=True, proxy=proxy)
    return chosen + wall, build, next((line for line in lines if "dependency layer" in line), "")


def sbuild_once(tarball: Path, dsc: Path, *, lists: bool, proxy: str | None) -> tuple[float, float, int]:
    """(wall seconds, sbuild Build-Time, bytes apt reported fetching) of one build of ``dsc``."""
    with tempfile.TemporaryDirectory(prefix="bench-env-") as tmp:
        work = Path(tmp)
        (work / "out").mkdir()
        (work / "home").mkdir()
        chroots = Path(tempfile.mkdtemp(prefix="buildfarm-bench-", dir="/dev/shm"))
        chroots.chmod(0o755)
        env = sbuild_environment(work / "home", proxy) | {"BUILDFARM_SBUILD_TMPDIR": str(chroots)}
        command = sbuild_command(tarball, "bookworm", work / "out", dsc, apt_update=not lists)
        try:
            started = time.monotonic()
            built = subprocess.run(
                command,
                check=False,
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=SBUILD_TIMEOUT_SECONDS,
            )
            wall = time.monotonic() - started
        finally:
            shutil.rmtree(chroots, ignore_errors=True)
        if built.returncode != 0:
            raise SystemExit(f"sbuild failed ({built.returncode}):\n{built.stdout[-3000:]}")
    build_time = next(
        (float(line.split(":")[1]) for line in built.stdout.splitlines() if line.startswith("Build-Time:")),
        0.0,
    )
    fetched = 0
    for line in built.stdout.splitlines():
        match = _FETCHED.match(line)
        if match:
            fetched += int(float(match.group(1)) * _UNITS[match.group(2)])
    return wall, build_time, fetched


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
            dscs = {name: make_dsc(name, work / "src") for name in examples}
            before: dict[str, list[tuple[float, float, int]]] = {n: [] for n in examples}
            after: dict[str, list[tuple[float, float, int]]] = {n: [] for n in examples}
            for _ in range(runs):
                for name, dsc in dscs.items():
                    print(f"before: {name} ...", flush=True)
                    before[name].append(sbuild_once(base, dsc, lists=False, proxy=None))
                    print(f"after: {name} ...", flush=True)
                    outside = cache.fetched_upstream()
                    wall, build, _ = sbuild_once(env.path, dsc, lists=True, proxy=cache.url)
                    after[name].append((wall, build, cache.fetched_upstream() - outside))
            big_runs = run_big(env, work, cache) if "big" in cases else None
        finally:
            cache.stop()
    load_end = os.getloadavg()[0]
    print()
    print(f"load average {load:.1f} -> {load_end:.1f} ({os.cpu_count()} cores)")
    if examples:
        report_examples(env, runs, before, after)
    if big_runs:
        report_big(*big_runs)
    return 0


BigRuns = tuple[tuple[float, float, int], tuple[float, float, int, str], tuple[float, float, str]]


def run_big(env: Environment, work: Path, cache: AptCache) -> BigRuns:
    """The large Build-Depends case: bare environment, layer made, layer hit."""
    big = make_dsc("hello-bigdeps", work / "src", BIG_DEPENDS, source="hello-standalone")
    print("large Build-Depends: in the bare environment (cold package cache) ...", flush=True)
    outside = cache.fetched_upstream()
    w0, b0, _ = sbuild_once(env.path, big, lists=True, proxy=cache.url)
    cold = cache.fetched_upstream() - outside
    policy = LayerPolicy(LayerCache(work / "layers", 1 << 34), work / "apt-views", 1, cache.url)
    print("large Build-Depends: first build, the layer is made ...", flush=True)
    outside = cache.fetched_upstream()
    w1, b1, line1 = layered_build(env, big, policy, cache.url)
    warm = cache.fetched_upstream() - outside
    print("large Build-Depends: second build, a layer hit ...", flush=True)
    w2, b2, line2 = layered_build(env, big, policy, cache.url)
    return (w0, b0, cold), (w1, b1, warm, line1), (w2, b2, line2)


def report_examples(
    env: Environment,
    runs: int,
    before: dict[str, list[tuple[float, float, int]]],
    after: dict[str, list[tuple[float, float, int]]],
) -> None:
    print(f"per-step setup = wall - sbuild Build-Time, median of {runs}")
    print(f"after: environment {env.short} ({env.size >> 20} MiB, {len(env.spec.packages)} extra packages)")
    print(f"{'package':20} {'before':>9} {'after':>9} {'ratio':>7}   {'fetched before':>15} {'after':>12}")
    setups_before, setups_after = [], []
    for name, runs_before in before.items():
        sb = statistics.median(w - b for w, b, _ in runs_before)
        sa = statistics.median(w - b for w, b, _ in after[name])
        fb = statistics.median(f for _, _, f in runs_before)
        fa = statistics.median(f for _, _, f in after[name][1:] or after[name])  # warm cache
        setups_before.append(sb)
        setups_after.append(sa)
        print(f"{name:20} {sb:8.1f}s {sa:8.1f}s {sa / sb:7.2f}   {_mb(fb):>15} {_mb(fa):>12}")
    mb, ma = statistics.median(setups_before), statistics.median(setups_after)
    print(f"{'median':20} {mb:8.1f}s {ma:8.1f}s {ma / mb:7.2f}")


def report_big(
    bare: tuple[float, float, int], made: tuple[float, float, int, str], hit: tuple[float, float, str]
) -> None:
    (w0, b0, cold), (w1, b1, warm, line1), (w2, b2, line2) = bare, made, hit
    print(f"large Build-Depends (+{', '.join(BIG_DEPENDS)}), through the package cache:")
    print(f"  no layer (sbuild installs)   setup {w0 - b0:6.1f} s, fetched from outside {_mb(cold)}")
    print(f"  first build (layer made)     setup {w1 - b1:6.1f} s, fetched from outside {_mb(warm)}")
    print(f"  second build (layer hit)     setup {w2 - b2:6.1f} s")
    print(f"    {line1.removeprefix('buildfarm: ')}")
    print(f"    {line2.removeprefix('buildfarm: ')}")


if __name__ == "__main__":
    sys.exit(main())
