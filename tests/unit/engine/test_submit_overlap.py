"""Submit records the build before packing its trees and releases each step as its source package
is stored, critical path first, so nodes build while the rest packs (issue 16); a tree that does
not pack fails the build with its one error and publishes nothing."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select

from buildfarm.engine import advance_build, control, packing, reaper, srcpkg, submit
from buildfarm.engine.context import FarmContext
from buildfarm.engine.dpkgsource import DpkgSourceForks
from buildfarm.engine.steps import claim_step, finish_step
from buildfarm.model.errors import ConflictError, PermanentError
from buildfarm.model.manifest import load_manifest
from buildfarm.model.types import StepState
from buildfarm.state.models import Build, Step

from debpkgs import make_package, write_manifest
from farmkit import RecordingDispatcher, drain, make_test_context


@dataclass
class AdvancingDispatcher(RecordingDispatcher):
    """Advances a build at once, in the caller's thread (the steps it releases become ready the
    moment the submit asks); :meth:`wait_released` waits for them."""

    ctx: FarmContext | None = None
    advanced: threading.Condition = field(default_factory=threading.Condition)

    def advance(self, build_id: int) -> None:
        assert self.ctx is not None
        with self.advanced:
            advance_build(self.ctx, build_id)
            self.advanced.notify_all()

    def wait_released(self, count: int) -> bool:
        """Whether ``count`` steps were released, waiting for them (a bound, not a timing: a
        submit that releases nothing while it packs never releases them)."""
        assert self.ctx is not None
        ctx = self.ctx
        with self.advanced:
            return self.advanced.wait_for(lambda: len(_released(ctx)) >= count, timeout=WAIT_SECONDS)


WAIT_SECONDS = 60.0


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    context.dispatcher = AdvancingDispatcher(ctx=context)
    monkeypatch.setattr(packing, "PACK_THREADS", 1)  # one tree at a time, in the submit's order
    monkeypatch.setattr(packing, "RELEASE_EVERY_SECONDS", 0.0)  # an advance after every tree
    yield context
    context.db.dispose()


def _released(ctx: FarmContext) -> list[str]:
    """The names of the steps released so far (no longer pending), in the order they were."""
    with ctx.db.session() as session:
        rows = session.scalars(
            select(Step.name).where(Step.state != StepState.PENDING).order_by(Step.ready_at, Step.id)
        )
        return list(rows)


def _packing(
    ctx: FarmContext,
    monkeypatch: pytest.MonkeyPatch,
    *,
    fails: str | None = None,
    after: dict[str, int] | None = None,
) -> list[tuple[str, list[str]]]:
    """Every ``dpkg-source -b`` from now on, as (tree, the steps released when it began); a tree
    of ``after`` is packed only once that many steps were released (the packing waits for
    the releases, so each release provably happens while the tree packs); ``fails`` fails."""
    seen: list[tuple[str, list[str]]] = []
    dpkg_source = srcpkg._dpkg_source
    assert isinstance(ctx.dispatcher, AdvancingDispatcher)
    dispatcher = ctx.dispatcher

    def watched(args: list[str], cwd: Path, what: str, forks: DpkgSourceForks | None = None) -> None:
        if args[0] == "-b":
            wanted = (after or {}).get(args[1], 0)
            assert dispatcher.wait_released(wanted), f"{args[1]}: {wanted} steps never released as it packed"
            seen.append((args[1], _released(ctx)))
            if args[1] == fails:
                raise PermanentError(f"{what}: dpkg-source -b failed: boom")
        dpkg_source(args, cwd, what, forks)

    monkeypatch.setattr(srcpkg, "_dpkg_source", watched)
    return seen


def test_steps_are_released_while_later_trees_pack(
    ctx: FarmContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    make_package(src, "base-lib")
    make_package(src, "mid-tool", build_depends=("base-lib",))
    make_package(src, "top-doc", build_depends=("mid-tool",))
    make_package(src, "solo")
    manifest = load_manifest(write_manifest(src, ["solo", "top-doc", "mid-tool", "base-lib"]))
    # one tree at a time: each after the one before it released its step (it waits for that)
    trees = _packing(ctx, monkeypatch, after={"mid-tool-1.0": 1, "solo-1.0": 1, "top-doc-1.0": 2})
    build_id = submit.submit_build(ctx, manifest, src, "alice")

    # the head of the longest chain first, then its next; base-lib was sent to a node while
    # the other trees packed, and solo before the last tree packed
    assert trees == [
        ("base-lib-1.0", []),
        ("mid-tool-1.0", ["base-lib"]),
        ("solo-1.0", ["base-lib"]),
        ("top-doc-1.0", ["base-lib", "solo"]),
    ]

    # the keys are the ones a submit with every tree packed before gives (the source cache)
    with ctx.db.session() as session:
        keys = dict(session.execute(select(Step.name, Step.input_key).where(Step.build_id == build_id)).all())
    assert all(keys.values())
    again = submit.submit_build(ctx, manifest, src, "alice")
    assert len(trees) == 4  # nothing packed again
    with ctx.db.session() as session:
        rows = session.execute(select(Step.name, Step.input_key).where(Step.build_id == again)).all()
    assert dict(rows) == keys

    drain(ctx)
    assert control.show_build(ctx, build_id).state == "succeeded"
    with ctx.db.session() as session:  # every source package stored: no packing lease left
        assert [b.packing_until for b in session.scalars(select(Build))] == [None, None]


def test_a_late_tree_that_does_not_pack_fails_the_build_once(
    ctx: FarmContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    for name in ("pk-a", "pk-b", "pk-c"):
        make_package(src, name)
    manifest = load_manifest(write_manifest(src, ["pk-a", "pk-b", "pk-c"]))
    claims = []
    dpkg_source = srcpkg._dpkg_source
    trees = _packing(ctx, monkeypatch, fails="pk-c-1.0", after={"pk-c-1.0": 2})
    watched = srcpkg._dpkg_source

    def claiming(args: list[str], cwd: Path, what: str, forks: DpkgSourceForks | None = None) -> None:
        if args == ["-b", "pk-c-1.0"]:  # a node holds the first step when the last tree fails
            with ctx.db.session() as session:
                first = session.scalars(select(Step.id).where(Step.name == "pk-a")).one()
            claims.append(claim_step(ctx, first, "node1"))
        watched(args, cwd, what, forks)

    monkeypatch.setattr(srcpkg, "_dpkg_source", claiming)
    with pytest.raises(PermanentError, match=r"^packages\[2\] \(pk-c\): dpkg-source -b failed: boom$"):
        submit.submit_build(ctx, manifest, src, "alice")
    monkeypatch.setattr(srcpkg, "_dpkg_source", dpkg_source)

    assert [tree for tree, _released in trees] == ["pk-a-1.0", "pk-b-1.0", "pk-c-1.0"]
    assert trees[-1][1] == ["pk-a", "pk-b"]  # released before the failure
    with ctx.db.session() as session:
        (build,) = session.scalars(select(Build)).all()
        states = dict(session.execute(select(Step.name, Step.state)).all())
    assert build.state == "failed"
    assert build.error == "packages[2] (pk-c): dpkg-source -b failed: boom"
    assert states == dict.fromkeys(("pk-a", "pk-b", "pk-c"), StepState.CANCELLED)
    (claim,) = claims
    assert claim is not None
    assert not finish_step(ctx, claim, [], None)  # the node's result is discarded
    drain(ctx)  # the tickets already sent build nothing
    view = control.show_build(ctx, build.id)
    assert (view.state, view.published) == ("failed", None)
    assert {s.state for s in view.steps} == {"cancelled"}
    with pytest.raises(ConflictError, match="submit it again"):
        control.retry_build(ctx, build.id)


def test_a_build_whose_submit_stopped_while_packing_is_failed_by_the_reaper(
    ctx: FarmContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The submitting process is gone (killed, its machine lost) after recording the build: its
    packing lease runs out and the reaper fails the build, so no step waits forever for a source
    package nobody makes.  (Simulated: the submit's pack of the second tree blocks, the reaper
    runs with a clock past the lease; the blocked submit never renews it.)"""
    monkeypatch.setattr(packing, "PACKING_RENEW_SECONDS", 1e9)  # the stopped submit renews nothing
    src = tmp_path / "src"
    for name in ("pk-a", "pk-b"):
        make_package(src, name)
    manifest = load_manifest(write_manifest(src, ["pk-a", "pk-b"]))
    packing_b, go_on = threading.Event(), threading.Event()
    dpkg_source = srcpkg._dpkg_source

    def stalled(args: list[str], cwd: Path, what: str, forks: DpkgSourceForks | None = None) -> None:
        if args == ["-b", "pk-b-1.0"]:
            packing_b.set()
            assert go_on.wait(WAIT_SECONDS)
        dpkg_source(args, cwd, what, forks)

    monkeypatch.setattr(srcpkg, "_dpkg_source", stalled)
    submitter = threading.Thread(target=submit.submit_build, args=(ctx, manifest, src, "alice"))
    submitter.start()
    try:
        assert packing_b.wait(WAIT_SECONDS), "the second tree was never packed"
        with ctx.db.session() as session:
            (build,) = session.scalars(select(Build)).all()
            keys = dict(session.execute(select(Step.name, Step.input_key)).all())
        assert build.packing_until is not None and build.state == "running"
        assert keys["pk-b"] == ""  # its source package is being made

        assert reaper.reap(ctx).abandoned == []  # the lease holds: nothing to do
        past = build.packing_until + dt.timedelta(seconds=1)
        monkeypatch.setattr(reaper, "utcnow", lambda: past)
        assert reaper.reap(ctx).abandoned == [build.id]
        assert reaper.reap(ctx).abandoned == []  # once
    finally:
        go_on.set()
        submitter.join(WAIT_SECONDS)
    assert not submitter.is_alive()

    drain(ctx)  # the ticket of pk-a, sent before, builds nothing
    view = control.show_build(ctx, build.id)
    assert (view.state, view.published) == ("failed", None)
    assert view.error == packing.ABANDONED.format(seconds=packing.PACKING_LEASE_SECONDS)
    assert {s.state for s in view.steps} == {"cancelled"}
    with ctx.db.session() as session:
        assert session.get_one(Build, build.id).packing_until is None


def test_the_recording_guard_is_held_while_the_build_is_recorded_not_while_trees_pack(
    ctx: FarmContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's running-build cap holds a per-user lock around the recording: a tree that takes
    minutes to pack must not keep the user's other submits waiting on it (nor outlive the lock)."""
    src = tmp_path / "src"
    for name in ("pk-a", "pk-b"):
        make_package(src, name)
    manifest = load_manifest(write_manifest(src, ["pk-a", "pk-b"]))
    held = threading.Event()
    events: list[str] = []
    dpkg_source = srcpkg._dpkg_source

    def watched(args: list[str], cwd: Path, what: str, forks: DpkgSourceForks | None = None) -> None:
        if args[0] == "-b":
            events.append(f"pack {args[1]} (guard held: {held.is_set()})")
        dpkg_source(args, cwd, what, forks)

    @contextlib.contextmanager
    def recording() -> Iterator[None]:
        with ctx.db.session() as session:
            events.append(f"guard entered with {session.scalar(select(func.count(Build.id)))} builds")
        held.set()
        yield
        held.clear()
        with ctx.db.session() as session:
            events.append(f"guard left with {session.scalar(select(func.count(Build.id)))} builds")

    monkeypatch.setattr(srcpkg, "_dpkg_source", watched)
    build_id = submit.submit_build(ctx, manifest, src, "alice", recording=recording)

    assert events == [
        "guard entered with 0 builds",
        "guard left with 1 builds",
        "pack pk-a-1.0 (guard held: False)",
        "pack pk-b-1.0 (guard held: False)",
    ]
    drain(ctx)
    assert control.show_build(ctx, build_id).state == "succeeded"
