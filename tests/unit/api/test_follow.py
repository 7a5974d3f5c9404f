"""The long poll of a build's changes (``--wait``): held while nothing changes, answered as soon
as one of the build's steps does, on a real SQLite database changed by a committing writer."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from buildfarm.api import follow
from buildfarm.api.follow import changes_after
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import ForbiddenError
from buildfarm.model.types import BuildState, StepState
from buildfarm.state.db import CommitProbe
from buildfarm.state.models import Build, Step
from buildfarm_client.models import BuildView

from farmkit import make_test_context, recorded_build


def _build(ctx: FarmContext, count: int) -> int:
    return recorded_build(ctx, [f"pkg{i}" for i in range(count)])


def _start(ctx: FarmContext, step_id: int) -> None:
    with ctx.db.session() as session:
        step = session.get_one(Step, step_id)
        step.state, step.node = StepState.RUNNING, "node1"


@pytest.fixture
def ctx(tmp_path: Path) -> FarmContext:
    return make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")


def _follow(
    ctx: FarmContext, build_id: int, wait: float, change: Callable[[], None], *, state_only: bool = False
) -> tuple[BuildView, float]:
    """The long poll of ``build_id`` from its current steps and state, with ``change`` made (and
    committed) right after its first look: its answer and the seconds it took."""
    view = control.show_build(ctx, build_id)
    known = {step.id: step.revision for step in view.steps}
    held = anyio.Event()

    async def follow() -> tuple[BuildView, float]:
        began = time.monotonic()
        async with anyio.create_task_group() as group:

            async def changing() -> None:
                await held.wait()  # the first look found nothing: the change lands during the hold
                await anyio.to_thread.run_sync(change)

            group.start_soon(changing)
            answer = await changes_after(
                ctx,
                build_id,
                known,
                view.state,
                wait=wait,
                check=lambda _first: held.set(),
                state_only=state_only,
            )
        return answer, time.monotonic() - began

    return anyio.run(follow)


def test_the_answer_comes_when_a_step_changes(ctx: FarmContext) -> None:
    build_id = _build(ctx, 3)
    moved = control.show_build(ctx, build_id).steps[1].id
    answer, seconds = _follow(ctx, build_id, 30, lambda: _start(ctx, moved))
    assert [(s.id, s.state) for s in answer.steps] == [(moved, "running")]
    assert seconds < 10  # answered by the change, not by the end of the wait
    ctx.db.dispose()


def test_nothing_changed_is_answered_when_the_wait_is_over(ctx: FarmContext) -> None:
    build_id, other = _build(ctx, 2), _build(ctx, 1)
    state = control.show_build(ctx, build_id).state
    unrelated = control.show_build(ctx, other).steps[0].id
    answer, seconds = _follow(ctx, build_id, 0.5, lambda: _start(ctx, unrelated))
    assert (answer.steps, answer.state) == ([], state)  # another build's commit woke it for nothing
    assert seconds >= 0.5
    ctx.db.dispose()


def test_a_refused_follower_is_not_kept_waiting(ctx: FarmContext) -> None:
    build_id = _build(ctx, 1)
    view = control.show_build(ctx, build_id)

    def refuse(_first: BuildView) -> None:
        raise ForbiddenError("not yours")

    async def follow() -> float:
        began = time.monotonic()
        with pytest.raises(ForbiddenError):
            await changes_after(ctx, build_id, {}, view.state, wait=30, check=refuse)
        return time.monotonic() - began

    assert anyio.run(follow) < 10
    ctx.db.dispose()


def _end(ctx: FarmContext, build_id: int) -> None:
    with ctx.db.session() as session:
        session.get_one(Build, build_id).state = BuildState.SUCCEEDED


def test_the_builds_end_is_told_at_the_commit_not_at_the_next_recheck(
    ctx: FarmContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build's state is read at each commit: its end is answered at once, although its steps
    would be asked again only after RECHECK_SECONDS (made longer than the whole wait here)."""
    monkeypatch.setattr(follow, "RECHECK_SECONDS", 300.0)
    build_id = _build(ctx, 2)
    answer, seconds = _follow(ctx, build_id, 120, lambda: _end(ctx, build_id))
    assert answer.state == "succeeded"
    assert seconds < 60  # by the commit's state read, not by a recheck (300 s) or the wait (120 s)
    ctx.db.dispose()


def _start_then_end(ctx: FarmContext, build_id: int, step_id: int, looks: list[object]) -> None:
    """Start a step; end the build once the follower read the build's state after that (or 5 s)."""
    _start(ctx, step_id)
    looked = len(looks)
    for _ in range(100):
        if len(looks) > looked:
            break
        time.sleep(0.05)
    _end(ctx, build_id)


@pytest.mark.parametrize("probe", [True, False], ids=["commit-probe", "polled"])
def test_state_only_holds_through_step_changes_until_the_builds_end(
    ctx: FarmContext, monkeypatch: pytest.MonkeyPatch, probe: bool
) -> None:
    """With ``state_only`` a step's change does not answer the follower (who shows only the end);
    the build's end does, with every step changed meanwhile.  Polled: as on PostgreSQL, where no
    commit probe exists (the state alone is read every POLL_SECONDS)."""
    build_id = _build(ctx, 2)
    moved = control.show_build(ctx, build_id).steps[0].id
    queries: list[int] = []  # each query of the build's steps (control.build_changes)
    looks: list[object] = []  # each read of the build's state alone
    changes = control.build_changes

    def counted(farm: FarmContext, build: int, known: dict[int, str]) -> BuildView:
        queries.append(build)
        return changes(farm, build, known)

    def looked(read: Callable[..., object]) -> Callable[..., object]:
        def read_and_count(*args: object) -> object:
            looks.append(read(*args))
            return looks[-1]

        return read_and_count

    monkeypatch.setattr(control, "build_changes", counted)
    # no batching: a follower told of steps would be answered at its first look after the change
    monkeypatch.setattr(follow, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(follow, "BATCH_SECONDS", 0.0)
    if probe:
        monkeypatch.setattr(CommitProbe, "value", looked(CommitProbe.value))
    else:
        monkeypatch.setattr(ctx.db, "commit_probe", lambda: contextlib.nullcontext(None))
        monkeypatch.setattr(follow, "POLL_SECONDS", 0.05)
        monkeypatch.setattr(follow, "_state", looked(follow._state))
    answer, seconds = _follow(
        ctx, build_id, 120, lambda: _start_then_end(ctx, build_id, moved, looks), state_only=True
    )
    assert answer.state == "succeeded"
    assert [(s.id, s.state) for s in answer.steps] == [(moved, "running")]  # told with the end
    assert len(queries) == 2  # the first look and the answer: none for the step's change alone
    assert "running" in looks  # the state was read after the step's change, before the end
    assert seconds < 60
    ctx.db.dispose()


def test_steps_moving_during_a_batch_are_told_with_it_from_one_more_query(
    ctx: FarmContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a step moved, the answer waits for the batch's end (BATCH_SECONDS) reading only the
    build's state at each commit: a second step moving meanwhile is told with the first, from one
    query of the steps when the answer goes, not from one at every commit."""
    monkeypatch.setattr(follow, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(follow, "BATCH_SECONDS", 6.0)  # the moves below take ~0.5 s: room on a loaded machine
    build_id, other = _build(ctx, 3), _build(ctx, 3)
    first, second = (step.id for step in control.show_build(ctx, build_id).steps[:2])
    unrelated = [step.id for step in control.show_build(ctx, other).steps]
    queries: list[int] = []
    changes = control.build_changes

    def counted(farm: FarmContext, build: int, known: dict[int, str]) -> BuildView:
        queries.append(build)
        return changes(farm, build, known)

    def move_both() -> None:
        _start(ctx, first)
        for _ in range(250):  # until the follower has read the first move (its second query)
            if len(queries) >= 2:
                break
            time.sleep(0.02)
        _start(ctx, second)
        for step_id in unrelated:  # commits of another build's: the steps are not asked again
            time.sleep(0.1)
            _start(ctx, step_id)

    monkeypatch.setattr(control, "build_changes", counted)
    answer, seconds = _follow(ctx, build_id, 60, move_both)
    assert [(s.id, s.state) for s in answer.steps] == [(first, "running"), (second, "running")]
    assert len(queries) == 3  # the first look, the one that saw the first move, the answer's
    assert seconds < 30  # at the batch's end, not the wait's
    ctx.db.dispose()
