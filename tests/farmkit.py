"""A farm context for engine tests: real database, real stores and runner, recorded dispatch.

``RecordingDispatcher`` keeps the messages the engine sends instead of handing them to Celery,
so a test decides exactly when (and how often) each one is delivered: that is how duplicate
deliveries and lost nodes are played deterministically. The Celery path itself is tested with
real workers in ``tests/integration/local/test_local_farm.py``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.engine.advance import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.steps import run_step
from buildfarm.engine.workdirs import REMOVALS
from buildfarm.model.settings import load_settings
from buildfarm.state.db import Database, upgrade
from buildfarm.state.models import Build, Step, StepOutput
from buildfarm.wiring import Wiring


@dataclass
class RecordingDispatcher:
    advances: list[int] = field(default_factory=list)
    runs: list[tuple[int, int]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # the build kind of each run, in order
    environments_asked: int = 0  # prepare_environment messages

    def advance(self, build_id: int) -> None:
        self.advances.append(build_id)

    nodes: list[str | None] = field(default_factory=list)  # the node each run was routed to, if any

    def run_step(self, step_id: int, attempt: int, kind: str, node: str | None = None) -> None:
        self.runs.append((step_id, attempt))
        self.kinds.append(kind)
        self.nodes.append(node)

    def check(self) -> None:
        return None

    def prepare_environment(self) -> None:
        self.environments_asked += 1


def make_test_context(tmp_path: Path, database_url: str, **settings: object) -> FarmContext:
    upgrade(database_url)
    values: dict[str, object] = {
        "state_dir": tmp_path / "state",
        "database_url": database_url,
        "runner": "host",
        "redis_url": "redis://unused.invalid:1/0",
        "lease_seconds": 4.0,
        "heartbeat_seconds": 0.5,
        "repo_port": 1,
    }
    values.update(settings)
    config = load_settings(**values)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return FarmContext(
        settings=config,
        db=Database(database_url),
        store=FsArtifactStore(config.state_dir / "artifacts"),
        repo=LocalAptRepository(config.state_dir / "repos", config.repository.url),
        dispatcher=RecordingDispatcher(),
        parts=Wiring(config),
    )


def dispatcher(ctx: FarmContext) -> RecordingDispatcher:
    assert isinstance(ctx.dispatcher, RecordingDispatcher)
    return ctx.dispatcher


def drain(ctx: FarmContext, node: str = "node1", max_rounds: int = 100) -> None:
    """Deliver every recorded message, in order, until none is left (bounded); then wait for the
    work directories of the steps run to be removed (a node removes them beside its next step)."""
    rec = dispatcher(ctx)
    for _ in range(max_rounds):
        if rec.advances:
            advance_build(ctx, rec.advances.pop(0))
        elif rec.runs:
            step_id, _attempt = rec.runs.pop(0)
            run_step(ctx, step_id, node)
        else:
            REMOVALS.wait()
            return
    raise AssertionError(f"messages still flowing after {max_rounds} rounds")


def finished_build(
    session: Session, *, kind: str = "nightly", finished: dt.datetime | None = None, **fields: object
) -> Build:
    """A succeeded build row as a finished build leaves it (proj/main, by alice), flushed so it
    has its id: for tests that write a history by hand instead of building it."""
    finished = finished or dt.datetime.now(dt.UTC)
    values: dict[str, object] = {
        "project": "proj",
        "branch": "main",
        "kind": kind,
        "user": "alice",
        "state": "succeeded",
        "manifest": {},
        "environment_id": "env",
        "created_at": finished,
        "finished_at": finished,
    }
    build = Build(**(values | fields))
    session.add(build)
    session.flush()
    return build


def recorded_build(  # each is a field a test sets
    ctx: FarmContext,
    names: list[str],
    depends: dict[str, list[str]] | None = None,
    *,
    outputs: bool = False,
    project: str = "p",
    user: str = "u",
    kind: str = "nightly",
    requires: dict[str, str] | None = None,
) -> int:
    """A pending build's rows written by hand (``project``/main, ``kind``, by ``user``): a step
    of each name, depending on ``depends``' names and requiring ``requires``' labels, with a .deb
    output each when ``outputs``; for tests of views, changes, queues and advances that need
    rows, not a submit."""
    with ctx.db.session() as session:
        build = Build(project=project, branch="main", kind=kind, user=user, manifest={}, environment_id="e")
        session.add(build)
        session.flush()
        for index, name in enumerate(names):
            step = Step(
                build_id=build.id,
                name=name,
                version="1",
                origin="o",
                source_sha256="0" * 64,
                tree_hash="t",
                input_key=f"{build.id}-{index}-".ljust(64, "0"),
                depends_on=(depends or {}).get(name, []),
                requires=(requires or {}).get(name, ""),
            )
            session.add(step)
            if outputs:
                session.flush()
                deb = StepOutput(
                    step_id=step.id, attempt=1, filename=f"{name}_1_all.deb", sha256="1" * 64, size=1
                )
                session.add(deb)
        return build.id
