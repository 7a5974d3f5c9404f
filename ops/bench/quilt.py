"""``make bench`` part 4: one real Debian quilt package, through the farm vs ``sbuild`` by hand.

rsakeyfind 1:1.0-8 (3.0 (quilt), a C++ program with debian/patches) from Debian's archive,
cached in ``~/.cache/buildfarm/debian-sources`` (tests/debsources.py, shared with the suite).
Same ``.dsc``, same build environment, same sbuild call and configuration (the runner's own
``sbuild_command`` and ``sbuild_environment``), same tmpfs unpack:

* **by hand**: ``sbuild --chroot-mode=unshare --chroot=<the farm's environment> ... x.dsc``,
  what a person types without a farm;
* **farm**: ``buildfarm build submit --wait`` of a manifest whose one entry is ``dsc:`` that
  file, on a fresh 1-node sbuild farm in a private state directory; submit to succeeded
  (upload, plan, dispatch, build, publish). The farm's start is timed apart.

The farm's build also gets its own staging repository as an extra apt source (every step does;
by hand there is none): part of what the farm costs. Prints numbers; asserts nothing about speed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import cli, farm_env, timed_build  # noqa: E402

from buildfarm.environments import cache_for, spec_for  # noqa: E402
from buildfarm.model.debsource import source_package  # noqa: E402
from buildfarm.model.settings import load_settings  # noqa: E402
from buildfarm.runners.sbuild import sbuild_command, sbuild_environment  # noqa: E402

from debsources import debian_source  # noqa: E402

PACKAGE = ("rsakeyfind", "1:1.0-8")
SBUILD_TIMEOUT_SECONDS = 1800


def copy_source(dsc: Path, into: Path) -> Path:
    """The .dsc and every file it names, copied into ``into`` (nothing writes to the cache)."""
    into.mkdir(parents=True)
    for path in source_package(dsc, dsc.name).paths():
        shutil.copyfile(path, into / path.name)
    return into / dsc.name


def by_hand(base: Path, distribution: str, tmpdir: Path | None, dsc: Path, work: Path) -> float:
    """Wall time of one sbuild of ``dsc``, called as the runner calls it, its chroot unpacked
    under ``tmpdir`` as the farm's (setting ``sbuild_tmpdir``: /dev/shm by default)."""
    home = work / "home"
    out = work / "out"
    home.mkdir(parents=True)
    out.mkdir()
    env = sbuild_environment(home)
    chroots = Path(tempfile.mkdtemp(prefix="buildfarm-bench-", dir=tmpdir)) if tmpdir else None
    if chroots is not None:
        chroots.chmod(0o755)  # the chroot's mapped users traverse it (mkdtemp makes it 0700)
        env["BUILDFARM_SBUILD_TMPDIR"] = str(chroots)
    try:
        started = time.monotonic()
        built = subprocess.run(
            sbuild_command(base, distribution, out, dsc, apt_update=False),
            cwd=work,
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=SBUILD_TIMEOUT_SECONDS,
        )
        took = time.monotonic() - started
        if built.returncode != 0:
            raise SystemExit(f"sbuild by hand failed ({built.returncode}):\n{built.stdout[-3000:]}")
    finally:
        if chroots is not None:
            shutil.rmtree(chroots, ignore_errors=True)
    if not any(out.glob("*.deb")):
        raise SystemExit(f"sbuild by hand made no .deb in {out}")
    return took


def farm_manifest(dsc: Path, work: Path) -> Path:
    """A manifest in ``work`` whose one package is the local ``dsc`` (an entry of kind ``dsc:``)."""
    manifest = work / "buildfarm.yaml"
    manifest.write_text(
        f"project: bench\nbranch: main\nkind: nightly\npackages:\n  - dsc: {dsc.relative_to(work)}\n"
    )
    return manifest


def through_farm(dsc: Path, work: Path) -> tuple[float, float, dict[str, Any]]:
    """(farm start, submit to succeeded, the build's view) on a fresh 1-node sbuild farm."""
    manifest = farm_manifest(dsc, work)
    env = farm_env(work / "state", "sbuild")
    started = time.monotonic()
    cli(env, "start", "--runner", "sbuild", "--nodes", "1")
    start = time.monotonic() - started
    try:
        wall, view = timed_build(env, manifest)
    finally:
        cli(env, "stop")
    if view["state"] != "succeeded":
        raise SystemExit(f"the farm's build ended {view['state']}: {view}")
    return start, wall, view


def main() -> int:
    settings = load_settings(runner="sbuild")  # sbuild by hand and the sbuild farm: its recipe
    # the farm's own build environment (toolchain and apt lists inside, issue 15), as its runner uses
    base = cache_for(settings).ensure(spec_for(settings), progress=print).path
    name, version = PACKAGE
    cached = debian_source(name, version)
    with tempfile.TemporaryDirectory(prefix="buildfarm-bench-quilt-") as tmp:
        work = Path(tmp)
        print(f"by hand: sbuild {cached.name} ...", flush=True)
        dsc = copy_source(cached, work / "hand" / "src")
        hand = by_hand(
            base, settings.buildenv.distribution, settings.buildenv.sbuild_tmpdir, dsc, work / "hand"
        )
        print(f"farm: {cached.name} through a fresh 1-node sbuild farm ...", flush=True)
        farm_dir = work / "farm"
        start, farm, view = through_farm(copy_source(cached, farm_dir / "src"), farm_dir)
    step = view["steps"][0]
    inside = float(step["duration_seconds"] or 0)
    print()
    print(f"{name} {version}, 3.0 (quilt), one sbuild, same .dsc, environment and sbuild call")
    print(f"{'sbuild by hand':32} {hand:7.1f} s")
    print(f"{'farm, submit to succeeded':32} {farm:7.1f} s   (its sbuild step {inside:.1f} s)")
    print(f"{'farm start (not in the above)':32} {start:7.1f} s")
    print(f"ratio farm / by hand:            {farm / hand:.2f}")
    print(f"farm overhead:                   {farm - hand:+.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
