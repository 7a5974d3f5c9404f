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


def test_a_narrow_terminal_keeps_names_whole_and_drops_the_log_column() -> None:
    """`make demo` prints at 80 columns: the step names used to be cut to 'hello-…'."""
    build = BuildView(
        id=3, project="examples", branch="main", kind="on-demand", user="u", state="succeeded",
        created_at="2026-01-01T00:00:00+00:00", finished_at=None, published=None, error=None,
        steps=[
            _step("hello-standalone", "succeeded", node="node-1", attempt=1, duration_seconds=24.3,
                  layer="none:" + "3f" * 32, log="/srv/farm/artifacts/logs/3/hello-standalone/1.log"),
            _step("greet-cli", "succeeded", node="node-2", attempt=1, duration_seconds=30.1,
                  layer="hit:" + "ab" * 32, log="/srv/farm/artifacts/logs/3/greet-cli/1.log"),
        ],
    )  # fmt: skip
    narrow = Console(width=80, record=True)
    narrow.print(steps_table(build, narrow.width))
    text = narrow.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert set(rows) == {"hello-standalone", "greet-cli"}
    assert "succeeded" in rows["hello-standalone"] and "node-1" in rows["hello-standalone"]
    assert "none:3f3f3f3f3f3f" in rows["hello-standalone"] and "hit:abababababab" in rows["greet-cli"]
    assert "/srv/farm" not in text
    assert "left out of a narrow terminal" in " ".join(text.split())  # the caption says so
    wide = Console(width=250, record=True)
    wide.print(steps_table(build, wide.width))
    assert "/srv/farm/artifacts/logs/3/greet-cli/1.log" in wide.export_text()
