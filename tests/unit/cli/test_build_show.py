"""``build show`` prints where each waiting step stands (issue 16): its position or its reason."""

from __future__ import annotations

from rich.console import Console

from buildfarm_cli.output import steps_table
from buildfarm_client.models import BuildView, StepView


def _step(name: str, state: str, **kw: object) -> StepView:
    fields: dict[str, object] = {
        "id": 1, "name": name, "version": "1.0", "state": state, "node": None, "attempt": 0,
        "depends_on": [], "input_key": "k", "reused_from": None, "started_at": None,
        "finished_at": None, "duration_seconds": None, "log": None, "error": None,
    }  # fmt: skip
    return StepView.model_validate(fields | kw)


def test_waiting_steps_show_their_position_or_reason() -> None:
    build = BuildView(
        id=7, project="p", branch="main", kind="nightly", user="u", state="running",
        created_at="2026-01-01T00:00:00+00:00", finished_at=None, published=None, error=None,
        steps=[
            _step("lib", "running", node="node1", attempt=1),
            _step("app", "ready", position=3, waiting="position 3 in class nightly"),
            _step("armtool", "ready", waiting="waiting: no node with arch=arm64", requires="arch=arm64"),
            _step("docs", "pending", waiting="waiting: dependencies (app)"),
        ],
    )  # fmt: skip
    console = Console(width=200, record=True)
    console.print(steps_table(build))
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert "node1" in rows["lib"]
    assert "position 3 in class nightly" in rows["app"]
    assert "waiting: no node with arch=arm64" in rows["armtool"]
    assert "waiting: dependencies (app)" in rows["docs"]
