"""``make bench``: what the control plane costs per change, at build sizes where it used to grow.

Three figures, in process, on a private SQLite database and directory (no farm started):

* **staging**: a build's staging repository grown one package at a time (each release of a step
  stages every package built so far): the cost of the last releases and how many packages were
  fetched in all, beside writing the whole repository again (what each release did before);
* **advance**: one advance of a build of STEPS steps after one step finished, and how many steps
  it loaded as ORM objects (the open steps are read as rows; only a step it makes ready is loaded);
* **follow**: one ``--wait`` poll of that build (``build_changes`` with nothing new) beside
  reading the whole view (what each poll did before).

Prints figures and ratios; asserts nothing about speed (that is for people).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import event, select

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from buildfarm.backends import apttree  # noqa: E402
from buildfarm.backends.aptrepo import LocalAptRepository  # noqa: E402
from buildfarm.backends.base import BuildRef, PackageFile  # noqa: E402
from buildfarm.engine import advance_build, build_changes, show_build  # noqa: E402
from buildfarm.engine.context import FarmContext  # noqa: E402
from buildfarm.model.types import BuildKind, StepState  # noqa: E402
from buildfarm.state.models import Build, Step, utcnow  # noqa: E402

from debpkgs import build_deb, fetch_from  # noqa: E402
from farmkit import make_test_context  # noqa: E402

PACKAGES = 200
STEPS = 5000


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_staging(work: Path, count: int) -> tuple[float, float, int]:
    """(seconds of the last release, seconds to write the whole repository once, packages fetched)."""
    debs = [build_deb(work / "debs", f"bench-pkg{i}", "1.0") for i in range(count)]
    repo = LocalAptRepository(work / "repos", "http://127.0.0.1:9")
    serve = fetch_from(debs)
    fetched: list[str] = []

    def fetch(sha256: str, dest: Path) -> None:
        fetched.append(sha256)
        serve(sha256, dest)

    build = BuildRef(1, "bench", "main", BuildKind.NIGHTLY, "bench")
    last = 0.0
    for size in range(1, count + 1):
        last = _timed(lambda size=size: repo.stage(build, debs[:size], fetch))  # type: ignore[misc]
    whole = work / "whole"
    rewrite = _timed(lambda: apttree.build_tree(whole, ".gen-", _copies(debs, work / "copies"), "whole"))
    shutil.rmtree(whole)
    return last, rewrite, len(fetched)


def _copies(debs: list[PackageFile], into: Path) -> list[PackageFile]:
    """Each package copied out of the store, fsynced, as every release used to materialize them."""
    into.mkdir(parents=True, exist_ok=True)
    copies = []
    for deb in debs:
        target = into / deb.filename
        shutil.copyfile(deb.path, target)
        with target.open("rb+") as handle:
            os.fsync(handle.fileno())
        copies.append(PackageFile(deb.filename, deb.sha256, deb.size, target))
    return copies


def big_build(ctx: FarmContext, steps: int) -> int:
    """A build of ``steps`` steps, all succeeded but the last two (``last`` needs ``next``)."""
    with ctx.db.session() as session:
        build = Build(
            project="bench", branch="main", kind="nightly", user="u", manifest={}, environment_id="e"
        )
        session.add(build)
        session.flush()
        now = utcnow()
        for i in range(steps):
            session.add(
                Step(
                    build_id=build.id,
                    name=f"pkg{i}",
                    version="1",
                    origin="o",
                    source_sha256="0" * 64,
                    tree_hash="t",
                    input_key=f"bench-{i}-".ljust(64, "0"),
                    depends_on=[f"pkg{i - 1}"] if i == steps - 1 else [],
                    state=StepState.SUCCEEDED if i < steps - 2 else StepState.PENDING,
                    finished_at=now if i < steps - 2 else None,
                )
            )
        return build.id


def bench_advance(ctx: FarmContext, build_id: int, steps: int) -> tuple[float, int]:
    """One advance after the second-last step finished: (seconds, steps loaded)."""
    with ctx.db.session() as session:
        step = session.scalars(
            select(Step).where(Step.build_id == build_id, Step.name == f"pkg{steps - 2}")
        ).one()
        step.state, step.finished_at = StepState.SUCCEEDED, utcnow()
    loaded: list[int] = []

    def count(step: Step, _context: object) -> None:
        loaded.append(step.id)

    event.listen(Step, "load", count)
    try:
        seconds = _timed(lambda: advance_build(ctx, build_id))
    finally:
        event.remove(Step, "load", count)
    return seconds, len(loaded)


def bench_follow(ctx: FarmContext, build_id: int) -> tuple[float, float]:
    """(seconds of one full view, seconds of one poll for changes when nothing changed)."""
    view = show_build(ctx, build_id)
    known = {step.id: step.revision for step in view.steps}
    full = min(_timed(lambda: show_build(ctx, build_id)) for _ in range(3))
    poll = min(_timed(lambda: build_changes(ctx, build_id, known)) for _ in range(3))
    return full, poll


def main(packages: int = PACKAGES, steps: int = STEPS) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-controlplane-") as tmp:
        work = Path(tmp)
        last, rewrite, fetched = bench_staging(work / "staging", packages)
        before = packages * (packages + 1) // 2
        print(f"staging, release {packages} of {packages}: {last * 1000:.1f} ms")
        print(
            f"  all {packages} written again (each release before): {rewrite * 1000:.0f} ms, "
            f"{rewrite / last:.1f}x"
        )
        print(f"  packages fetched over the build: {fetched} (before: {before})")
        ctx = make_test_context(work / "db", f"sqlite:///{work / 'farm.db'}")
        build_id = big_build(ctx, steps)
        seconds, loaded = bench_advance(ctx, build_id, steps)
        print(f"advance of a {steps}-step build after one step: {seconds * 1000:.1f} ms")
        print(f"  steps loaded as objects: {loaded} (before: {steps}; the open ones are read as rows)")
        full, poll = bench_follow(ctx, build_id)
        print(f"--wait poll of that build, nothing new: {poll * 1000:.1f} ms")
        print(f"  reading the whole view (each poll before): {full * 1000:.1f} ms, {full / poll:.1f}x")
        ctx.db.dispose()


if __name__ == "__main__":
    main()
