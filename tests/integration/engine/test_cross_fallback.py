"""A foreign-architecture step whose native node went offline is cross-built instead (issue 16):
after ``cross_fallback_seconds`` the reaper moves it and its pending dependents to the cross
placement with the keys submit gives them when no native node is online, and an amd64 node
takes it; a step whose manifest says ``arch:`` keeps waiting; the move happens once.

Real database (SQLite and PostgreSQL), real submit, advance, reaper and claim; the runner is the
host one that also answers the cross-building questions (no cross build runs: the real one is
``tests/integration/runners``), the clock is driven through ``use_clock``.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from sqlalchemy import select, update

from buildfarm.engine import reap, routing
from buildfarm.engine.advance import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.steps import claim_next
from buildfarm.engine.submit import submit_build
from buildfarm.environments import host_architecture
from buildfarm.model.manifest import load_manifest
from buildfarm.model.types import BuildState, StepState
from buildfarm.runners.base import Runner, StepJob, StepResult
from buildfarm.state.models import Build, Node, Step, use_clock, utcnow

from debpkgs import make_package
from dispatchkit import ctx
from farmkit import dispatcher

__all__ = ["ctx"]  # the fixture, imported for this module's tests

NATIVE = host_architecture()
FOREIGN = "arm64" if NATIVE != "arm64" else "amd64"
OWN = sorted({f"arch={NATIVE}", f"native-arch={NATIVE}", "builder=host"})
OTHER = sorted({f"arch={FOREIGN}", f"native-arch={FOREIGN}", "builder=host"})


class CrossRunner:
    """The host runner, able to say what a cross build would use (it never runs one here)."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.name = inner.name
        self.asked: list[str] = []  # the cross environments asked for

    def environment_id(self) -> str:
        return self.inner.environment_id()

    def run(self, job: StepJob) -> StepResult:
        return self.inner.run(job)

    def native_architecture(self) -> str:
        return NATIVE

    def cross_environment_id(self, host_arch: str) -> str:
        self.asked.append(host_arch)
        return f"cross-{host_arch}"


def _any(root: Path, name: str, build_depends: tuple[str, ...] = ()) -> None:
    control = make_package(root, name, build_depends=build_depends) / "debian" / "control"
    control.write_text(control.read_text().replace("Architecture: all", "Architecture: any"))


def _submit(ctx: FarmContext, root: Path, branch: str, *, forced: bool = True) -> int:
    """lib and app (build-depends on lib) for both architectures, and ``forced`` (``arch:``)."""
    (root / "buildfarm.yaml").write_text(
        f"project: proj\nbranch: {branch}\nkind: nightly\narchitectures: [{NATIVE}, {FOREIGN}]\n"
        "packages:\n  - path: lib\n  - path: app\n"
        + (f"  - {{path: forced, arch: {FOREIGN}}}\n" if forced else "")
    )
    return submit_build(ctx, load_manifest(root / "buildfarm.yaml"), root, "alice")


def _steps(ctx: FarmContext, build_id: int) -> dict[str, Step]:
    with ctx.db.session() as session:
        steps = session.scalars(select(Step).where(Step.build_id == build_id)).all()
        session.expunge_all()
        return {s.name: s for s in steps}


def _native_node_gone(ctx: FarmContext, root: Path) -> tuple[int, dict[str, Step]]:
    """A build submitted while a node of FOREIGN was online, released; then that node is gone."""
    ctx.runner = CrossRunner(ctx.runner)
    _any(root, "lib")
    _any(root, "app", build_depends=("lib",))
    _any(root, "forced")
    routing.record_node(ctx, "own", OWN)
    routing.record_node(ctx, "other", OTHER)
    build_id = _submit(ctx, root, "main")
    advance_build(ctx, build_id)
    with ctx.db.session() as session:  # the FOREIGN node's last heartbeat, long ago
        session.execute(
            update(Node).where(Node.name == "other").values(last_seen=utcnow() - dt.timedelta(hours=1))
        )
    return build_id, _steps(ctx, build_id)


def test_a_foreign_step_whose_native_node_went_offline_is_cross_built(
    ctx: FarmContext, tmp_path: Path
) -> None:
    build_id, before = _native_node_gone(ctx, tmp_path)
    lib, app = f"lib:{FOREIGN}", f"app:{FOREIGN}"
    assert before[lib].state == StepState.READY
    assert before[lib].requires == f"arch={FOREIGN},native-arch={FOREIGN}"
    assert before[app].state == StepState.PENDING

    start = utcnow()
    assert reap(ctx).cross_built == []  # notes since when no node can run it; within the grace
    with use_clock(lambda: start + dt.timedelta(seconds=120)):
        routing.record_node(ctx, "own", OWN)  # the native node still beats
        assert reap(ctx).cross_built == [build_id]
        advance_build(ctx, dispatcher(ctx).advances[-1])
        after = _steps(ctx, build_id)
        # moved: the cross environment, no native node required, back in the queue, saying why
        assert (after[lib].state, after[lib].requires, after[lib].environment_id) == (
            StepState.READY,
            "",
            f"cross-{FOREIGN}",
        )
        assert after[lib].error is not None
        assert after[lib].error.startswith(
            f"cross-building for {FOREIGN}: no native {FOREIGN} node online since"
        )
        assert (after[app].state, after[app].requires, after[app].environment_id) == (
            StepState.PENDING,
            "",
            f"cross-{FOREIGN}",
        )
        # new keys for it and its dependent, the same as a submit without a native node gives
        assert after[lib].input_key != before[lib].input_key
        assert after[app].input_key != before[app].input_key
        # (without ``forced``: submit builds every step of an architecture a manifest's arch:
        # names natively, as long as a node of it is online)
        fresh = _steps(ctx, _submit(ctx, tmp_path, "again", forced=False))
        assert fresh[lib].environment_id == f"cross-{FOREIGN}"
        assert {n: s.input_key for n, s in after.items() if n != "forced"} == {
            n: s.input_key for n, s in fresh.items()
        }
        # untouched: the native architecture's steps, and the one whose manifest says arch:
        for name in ("lib", "app", "forced"):
            assert (after[name].input_key, after[name].requires) == (
                before[name].input_key,
                before[name].requires,
            )
        # a node of the farm's own architecture takes it
        claim = claim_next(ctx, after[lib].id, "own", frozenset(OWN))
        assert claim is not None and claim.step_id == after[lib].id


def test_a_forced_native_step_keeps_waiting_and_the_move_happens_once(
    ctx: FarmContext, tmp_path: Path
) -> None:
    build_id, before = _native_node_gone(ctx, tmp_path)
    start = utcnow()
    reap(ctx)
    with use_clock(lambda: start + dt.timedelta(seconds=120)):
        routing.record_node(ctx, "own", OWN)
        assert reap(ctx).cross_built == [build_id]
        moved = _steps(ctx, build_id)
        assert isinstance(ctx.runner, CrossRunner)
        asked = len(ctx.runner.asked)
        assert reap(ctx).cross_built == []  # the second round finds nothing left to move
        assert reap(ctx).cross_built == []
        assert len(ctx.runner.asked) == asked  # nor makes a cross environment for the forced step
        again = _steps(ctx, build_id)
        assert {n: (s.input_key, s.requires, s.state) for n, s in again.items()} == {
            n: (s.input_key, s.requires, s.state) for n, s in moved.items()
        }
        forced = again["forced"]
        assert (forced.state, forced.requires, forced.environment_id) == (
            StepState.READY,
            f"arch={FOREIGN},native-arch={FOREIGN}",
            None,
        )
        assert forced.input_key == before["forced"].input_key
    with use_clock(lambda: start + dt.timedelta(seconds=1900)):  # it fails with the reason
        routing.record_node(ctx, "own", OWN)
        reap(ctx)
        advance_build(ctx, build_id)
        forced = _steps(ctx, build_id)["forced"]
        assert forced.state == StepState.FAILED
        assert forced.error is not None and forced.error.startswith(f"not built: no node with arch={FOREIGN}")
        with ctx.db.session() as session:
            assert session.get_one(Build, build_id).state == BuildState.RUNNING  # lib:arm64 still to build


def test_a_build_still_packing_is_moved_once_its_source_packages_are_made(
    ctx: FarmContext, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A submit records the build before its trees are packed; a step whose source package is not
    made yet has no input key (it waits).  The reaper leaves such a build as it is, quietly (its
    keys cannot be computed again yet: it must not warn every pass), and moves it once packed."""
    build_id, before = _native_node_gone(ctx, tmp_path)
    app = f"app:{FOREIGN}"
    with ctx.db.session() as session:  # app's source package "is being made"
        session.execute(
            update(Step)
            .where(Step.build_id == build_id, Step.origin == before[app].origin)
            .values(input_key="")
        )
    start = utcnow()
    reap(ctx)
    with use_clock(lambda: start + dt.timedelta(seconds=120)), caplog.at_level(logging.INFO):
        routing.record_node(ctx, "own", OWN)
        assert reap(ctx).cross_built == []
        assert [r.getMessage() for r in caplog.records if r.name.startswith("buildfarm")] == []
        assert _steps(ctx, build_id)[f"lib:{FOREIGN}"].environment_id is None  # not moved yet
        with ctx.db.session() as session:  # packed: its keys as submit recorded them
            for name, step in before.items():
                session.execute(
                    update(Step)
                    .where(Step.build_id == build_id, Step.name == name)
                    .values(input_key=step.input_key)
                )
        assert reap(ctx).cross_built == [build_id]
        assert _steps(ctx, build_id)[f"lib:{FOREIGN}"].environment_id == f"cross-{FOREIGN}"
