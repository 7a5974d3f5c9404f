"""``make bench``: the farm beside ``make -j2`` on trivial packages, and a big submit re-run.

* **dispatch**: TRIVIAL independent trivial packages (``dpkg-buildpackage -b`` of a native
  package that installs one file) through a fresh 2-node local farm in host mode, submit to
  published, beside ``make -j2`` running the same ``dpkg-buildpackage`` on copies of the same
  trees: steps/s of each, the ratio (goal: farm within 1.1x of make) and the farm's overhead per
  step.
* **submit**: a manifest of BIG packages submitted in process (no farm: the engine with a
  recording dispatcher): the first submit (every tree packed), then, once its steps are marked
  built (each with a small .deb), its publication, then a no-change re-run: submit plus the
  advance that reuses every step and publishes (goal: <= 5 s).

``BENCH_TRIVIAL`` and ``BENCH_PACKAGES`` change the sizes (default 40 and 5000).  Prints figures
and ratios; asserts nothing about speed (that is for people).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from buildfarm.engine import advance_build  # noqa: E402
from buildfarm.engine.context import FarmContext  # noqa: E402
from buildfarm.engine.submit import submit_build  # noqa: E402
from buildfarm.model.manifest import load_manifest  # noqa: E402
from buildfarm.model.types import StepState  # noqa: E402
from buildfarm.state.models import Step, StepOutput, utcnow  # noqa: E402

from debpkgs import make_package, write_manifest  # noqa: E402
from farmkit import make_test_context  # noqa: E402

CLI = [sys.executable, "-m", "buildfarm_cli"]
TRIVIAL = int(os.environ.get("BENCH_TRIVIAL", "40"))
PACKAGES = int(os.environ.get("BENCH_PACKAGES", "5000"))


def _cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run([*CLI, *args], env=env, check=True, capture_output=True, text=True).stdout


def trivial_sources(src: Path, count: int, prefix: str) -> list[str]:
    names = [f"{prefix}{i:05d}" for i in range(count)]
    for name in names:
        make_package(src, name)
    return names


def farm_wall(work: Path, src: Path, names: list[str]) -> tuple[float, int]:
    """Seconds from submit to published on a fresh 2-node host-mode farm; steps that succeeded."""
    manifest = write_manifest(src, names, project="bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
    env |= {
        "BUILDFARM_STATE_DIR": str(work / "state"),
        "BUILDFARM_REPO_PORT": "0",
        "BUILDFARM_API_PORT": "0",
        "BUILDFARM_RUNNER": "host",
    }
    _cli(env, "start", "--runner", "host", "--nodes", "2")
    try:
        started = time.monotonic()
        view = json.loads(_cli(env, "--output", "json", "build", "submit", str(manifest), "--wait"))
        wall = time.monotonic() - started
    finally:
        _cli(env, "stop")
    return wall, sum(1 for s in view["steps"] if s["state"] == "succeeded")


def make_wall(work: Path, src: Path, names: list[str]) -> float:
    """Seconds of ``make -j2`` running ``dpkg-buildpackage -b`` in a copy of every tree."""
    work.mkdir(parents=True)
    rules = [f"all: {' '.join(f'{n}.done' for n in names)}\n"]
    for name in names:
        shutil.copytree(src / name, work / name)
        rules.append(
            f"{name}.done:\n\tcd {name} && dpkg-buildpackage -b -uc -us >../{name}.log 2>&1\n\ttouch $@\n"
        )
    (work / "Makefile").write_text("".join(rules))
    started = time.monotonic()
    subprocess.run(["make", "-j2", "-s"], cwd=work, check=True)
    return time.monotonic() - started


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tiny_deb(name: str, version: str) -> bytes:
    """A minimal real .deb of binary ``name`` (source ``name``), made in process: ``dpkg-deb
    --build`` for each of thousands of packages would take minutes."""
    control = f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: bench <b@b.invalid>\n"
    control += f"Description: bench package {name}\n"
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", _tar_gz({"./control": control.encode()})),
        ("data.tar.gz", _tar_gz({f"./usr/share/{name}/payload": name.encode()})),
    ]
    out = [b"!<arch>\n"]
    for member, data in members:
        out.append(f"{member:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def built(ctx: FarmContext, build_id: int) -> None:
    """Record every step of the build as built, each with a .deb of its package in the store."""
    with ctx.db.session() as session:
        for step in session.scalars(select(Step).where(Step.build_id == build_id)):
            deb = ctx.store.put_bytes(tiny_deb(step.name, step.version))
            step.state, step.finished_at, step.attempt = StepState.SUCCEEDED, utcnow(), 1
            filename = f"{step.name}_{step.version}_all.deb"
            session.add(
                StepOutput(step_id=step.id, attempt=1, filename=filename, sha256=deb.sha256, size=deb.size)
            )


def big_submit(work: Path, count: int) -> tuple[float, float, float, float, int]:
    """(first submit s, its publish s, no-change re-run submit s, its advance s, steps reused).

    The first build is published (as if built) before the re-run, as a real re-run follows a
    published build: the re-run's publication finds its packages in the repository already."""
    src = work / "src"
    names = trivial_sources(src, count, "big")
    manifest = load_manifest(write_manifest(src, names, project="big"))
    ctx = make_test_context(work / "farm", f"sqlite:///{work / 'farm.db'}")
    started = time.monotonic()
    first = submit_build(ctx, manifest, src, "bench")
    first_s = time.monotonic() - started
    built(ctx, first)  # as if its steps had been built
    started = time.monotonic()
    advance_build(ctx, first)  # publishes it
    publish_s = time.monotonic() - started
    started = time.monotonic()
    again = submit_build(ctx, manifest, src, "bench")
    submit_s = time.monotonic() - started
    started = time.monotonic()
    advance_build(ctx, again)
    advance_s = time.monotonic() - started
    with ctx.db.session() as session:
        reused = session.query(Step).filter(Step.build_id == again, Step.reused_from.is_not(None)).count()
    ctx.db.dispose()
    return first_s, publish_s, submit_s, advance_s, reused


def main(trivial: int = TRIVIAL, packages: int = PACKAGES, *, farm: bool = True) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        if farm:
            src = work / "trivial"
            names = trivial_sources(src, trivial, "triv")
            print(
                f"dispatch: {trivial} trivial packages, host runner, 2 nodes, beside make -j2 ...", flush=True
            )
            made = make_wall(work / "make", src, names)
            farmed, succeeded = farm_wall(work / "farm", src, names)
            print(f"  make -j2:      {made:6.1f} s, {trivial / made:5.2f} steps/s")
            print(f"  farm, 2 nodes: {farmed:6.1f} s, {succeeded / farmed:5.2f} steps/s ({succeeded} built)")
            print(f"  ratio farm / make: {farmed / made:.2f} (goal <= 1.1)")
            print(f"  farm overhead a step (2 at a time): {2 * (farmed - made) / trivial:.2f} s")
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
