"""A build's view costs a fixed number of queries, however many steps it has (issue 16 part 5):
the steps and their outputs are loaded in one query each, not one query per step."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event

from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.model.types import StepState
from buildfarm.state.models import Step

from farmkit import make_test_context, recorded_build


def _build_with_steps(ctx: FarmContext, count: int) -> int:
    return recorded_build(ctx, [f"pkg{i}" for i in range(count)], outputs=True)


@pytest.mark.parametrize("steps", [1, 60])
def test_show_build_queries_do_not_grow_with_steps(tmp_path: Path, steps: int) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    build_id = _build_with_steps(ctx, steps)
    statements: list[str] = []
    event.listen(ctx.db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    view = control.show_build(ctx, build_id)

    assert [s.outputs[0]["filename"] for s in view.steps] == [f"pkg{i}_1_all.deb" for i in range(steps)]
    assert len(statements) <= 4, statements
    ctx.db.dispose()


def test_build_changes_loads_only_the_steps_that_changed(tmp_path: Path) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    build_id = _build_with_steps(ctx, 40)
    view = control.show_build(ctx, build_id)
    known = {step.id: step.revision for step in view.steps}
    assert control.build_changes(ctx, build_id, known).steps == []
    moved = view.steps[7].id
    with ctx.db.session() as session:
        step = session.get_one(Step, moved)
        step.state, step.node = StepState.RUNNING, "node1"
    loaded: list[int] = []

    def count(step: Step, _context: object) -> None:
        loaded.append(step.id)

    event.listen(Step, "load", count)
    try:
        changes = control.build_changes(ctx, build_id, known)
    finally:
        event.remove(Step, "load", count)
    assert [(s.id, s.state, s.node) for s in changes.steps] == [(moved, "running", "node1")]
    assert changes.steps[0].outputs[0]["filename"] == "pkg7_1_all.deb"
    assert changes.steps[0].revision != known[moved]
    assert loaded == [moved]
    assert len(control.build_changes(ctx, build_id, {}).steps) == 40  # a new follower gets every step
    ctx.db.dispose()
