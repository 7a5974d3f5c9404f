"""A step's dependency layer outcome is on its record: the API's step view and ``build show``
(issue 15 part 3: hits and misses visible, not only in the log and the metrics).

Real dpkg-buildpackage builds through the engine on SQLite, the real app in-process (httpx's ASGI
transport).  The runner is the host runner with the layer outcome an sbuild runner reports
(``StepResult.layer``): the host runner has no layers.  The real sbuild runner's outcomes are
checked in tests/integration/runners/test_sbuild_farm.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from buildfarm import accounts
from buildfarm.api.app import create_app
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.model.manifest import load_manifest
from buildfarm.runners.base import Runner, StepJob, StepResult
from buildfarm_cli.output import steps_table
from buildfarm_client.models import BuildView

from debpkgs import make_package, write_manifest
from farmkit import drain, make_test_context

pytestmark = pytest.mark.integration

OUTCOMES = {"lib": "miss:0123456789ab", "app": "hit:0123456789ab", "doc": "none"}


class _LayeredRunner:
    """The host runner, reporting the layer outcome the sbuild runner would for each step."""

    def __init__(self, runner: Runner) -> None:
        self.runner, self.name = runner, runner.name

    def environment_id(self) -> str:
        return self.runner.environment_id()

    def run(self, job: StepJob) -> StepResult:
        return replace(self.runner.run(job), layer=OUTCOMES.get(job.step_name))


@pytest.fixture
def ctx(tmp_path: Path, redis_url: str) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}", redis_url=redis_url)
    yield context
    context.db.dispose()


def _get(ctx: FarmContext, token: str, path: str) -> httpx.Response:
    app = create_app(ctx.settings, ctx)

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as c:
            return await c.get(path)

    return asyncio.run(send())


def test_build_show_has_each_steps_layer_outcome(ctx: FarmContext, tmp_path: Path) -> None:
    make_package(tmp_path, "lib")
    make_package(tmp_path, "app", build_depends=("lib",))
    make_package(tmp_path, "doc")
    make_package(tmp_path, "plain")  # OUTCOMES has none for it: a runner without layers
    manifest = load_manifest(write_manifest(tmp_path, ["lib", "app", "doc", "plain"]))
    build_id = submit_build(ctx, manifest, tmp_path, "alice")
    ctx.runner = _LayeredRunner(ctx.runner)
    drain(ctx)

    answer = _get(ctx, accounts.init_admin(ctx).token, f"/api/v1/builds/{build_id}")
    assert answer.status_code == 200, answer.text
    view = BuildView.model_validate(answer.json())
    assert view.state == "succeeded", view
    assert {s.name: s.layer for s in view.steps} == {
        "lib": "miss:0123456789ab",
        "app": "hit:0123456789ab",
        "doc": "none",
        "plain": None,
    }
    console = Console(width=250, record=True)
    console.print(steps_table(view))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "attempt" in line)
    assert [c.strip() for c in header.split("┃")[1:-1]][6] == "layer"
    rows = {line.split("│")[1].strip(): line.split("│") for line in lines if line.count("│") > 3}
    assert rows["lib"][7].strip() == "miss:0123456789ab" and rows["plain"][7].strip() == ""
