"""``--wait`` reads the build once, then asks only for what changed, each ask a long poll
(issue 16 part 5)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from buildfarm_cli import main
from buildfarm_cli.httpclient import HttpClient
from buildfarm_cli.output import OutputFormat
from buildfarm_client.models import BuildView, StepView


def _step(step_id: int, state: str) -> StepView:
    return StepView(
        id=step_id,
        name=f"pkg{step_id}",
        version="1",
        state=state,
        node=None,
        attempt=0,
        depends_on=[],
        input_key="k",
        reused_from=None,
        started_at=None,
        finished_at=None,
        duration_seconds=None,
        log=None,
        error=None,
        revision=f"{step_id}-{state}",
    )


def _build(state: str, steps: list[StepView]) -> BuildView:
    return BuildView(
        id=1,
        project="p",
        branch="main",
        kind="nightly",
        user="u",
        state=state,
        created_at="2026-01-01T00:00:00",
        finished_at=None,
        published=None,
        error=None,
        steps=steps,
    )


class ChangingFarm:
    """A farm whose build moves on at each poll; it answers ``changes`` with the moved steps only."""

    def __init__(self, count: int) -> None:
        self.steps = {i: _step(i, "ready") for i in range(count)}
        self.shown = 0
        self.asked: list[dict[int, str]] = []
        self.held: list[tuple[str | None, float, bool]] = []  # the state, wait and state_only of each ask
        self.script = [[0], [1, 2], [], [0]]  # the steps that finish before each poll

    def show(self, build_id: int) -> BuildView:
        self.shown += 1
        return _build("running", list(self.steps.values()))

    def changes(
        self, build_id: int, known: dict[int, str], *, state: str | None, wait: float, state_only: bool
    ) -> BuildView:
        self.asked.append(dict(known))
        self.held.append((state, wait, state_only))
        for step_id in self.script.pop(0) if self.script else []:
            self.steps[step_id] = _step(step_id, "succeeded")
        done = all(s.state == "succeeded" for s in self.steps.values())
        moved = [s for s in self.steps.values() if known.get(s.id) != s.revision]
        return _build("succeeded" if done else "running", moved)


@pytest.mark.parametrize("fmt", [OutputFormat.JSON, OutputFormat.TEXT])
def test_wait_reads_the_build_once_then_only_changes(
    monkeypatch: pytest.MonkeyPatch, fmt: OutputFormat
) -> None:
    monkeypatch.setattr(main, "WAIT_POLL_SECONDS", 0)
    farm = ChangingFarm(3)
    client: Any = farm
    view = main._follow_build(client, 1, 60, fmt)
    assert farm.shown == 1
    assert view.state == "succeeded"
    assert [(s.id, s.state) for s in view.steps] == [(0, "succeeded"), (1, "succeeded"), (2, "succeeded")]
    assert len(farm.asked) == 2  # the poll after steps 1 and 2 finished saw the build end
    assert farm.asked[1] == {0: "0-succeeded", 1: "1-ready", 2: "2-ready"}  # what it had merged
    # each ask is a long poll: the farm holds it while the build is still what the follower knows,
    # and only a table, which shows the steps as they move, asks to be told of their changes
    held = ("running", main.LONG_POLL_SECONDS, fmt == OutputFormat.JSON)
    assert farm.held == [held] * 2


def test_a_farm_older_than_the_long_poll_is_asked_without_it() -> None:
    """The fields of the long poll are unknown to an older farm's API, which refuses unknown
    fields (422, as ``BuildChangesIn`` did before them): the follower then asks as it used to."""
    bodies: list[dict[str, Any]] = []

    def older_farm(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        extra = sorted(set(body) - {"known"})
        if extra:
            detail = {"code": "invalid", "message": f"body.{extra[0]}: Extra inputs are not permitted"}
            return httpx.Response(422, json={"error": detail})
        return httpx.Response(200, json=_build("running", []).model_dump(mode="json"))

    client = HttpClient("http://farm", None, transport=httpx.MockTransport(older_farm))
    try:
        for _ in range(2):
            assert client.changes(1, {1: "r"}, state="running", wait=20).steps == []
    finally:
        client.close()
    assert [sorted(b) for b in bodies] == [["known", "state", "wait_seconds"], ["known"], ["known"]]


def test_a_farm_older_than_state_only_keeps_the_long_poll() -> None:
    """A farm that holds the long poll but does not know ``state_only`` refuses it (422): the
    follower asks it without that field from then on, still held."""
    bodies: list[dict[str, Any]] = []

    def farm(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if "state_only" in body:
            detail = {"code": "invalid", "message": "body.state_only: Extra inputs are not permitted"}
            return httpx.Response(422, json={"error": detail})
        return httpx.Response(200, json=_build("running", []).model_dump(mode="json"))

    client = HttpClient("http://farm", None, transport=httpx.MockTransport(farm))
    try:
        for _ in range(2):
            assert client.changes(1, {1: "r"}, state="running", wait=20, state_only=True).steps == []
    finally:
        client.close()
    with_wait = ["known", "state", "wait_seconds"]
    assert [sorted(b) for b in bodies] == [[*with_wait[:2], "state_only", with_wait[2]], with_wait, with_wait]
