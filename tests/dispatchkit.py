"""Real Celery workers for the dispatch tests, and ready steps written straight into the database.

:func:`probe_worker` starts a real Celery worker (the farm's own ``make_celery`` configuration,
one process, one task at a time, as a build node takes tickets) whose ``buildfarm.run_step``
runs the farm's real claim (:func:`buildfarm.engine.steps.claim_next`, with the node's name and
labels) and records which step it got instead of building it.  :func:`ready_steps` writes a
running build of one tenant with steps already ``ready``, as advance leaves them (in their queue).
:func:`celery_dispatcher` queues tickets as the farm does; ``from dispatchkit import ctx`` gives
a module's tests the fixture of a farm context on the test's database.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from buildfarm.dispatch.celery_app import CeleryDispatcher, make_celery
from buildfarm.engine import fairshare
from buildfarm.engine.context import FarmContext
from buildfarm.model.settings import load_settings
from buildfarm.model.types import BuildState, StepState
from buildfarm.state.models import Build, Step

from farmkit import make_test_context
from helpers import wait_for

TESTS = Path(__file__).resolve().parent

PROBE = """
from pathlib import Path

from buildfarm.dispatch.celery_app import make_celery
from buildfarm.engine.steps import claim_next
from buildfarm.model.settings import load_settings
from farmkit import make_test_context

app = make_celery(load_settings(state_dir={state!r}, redis_url={redis!r}))
app.conf.include = ()  # not the farm's tasks: only this probe
ctx = make_test_context(Path({root!r}), {database!r})
LABELS = frozenset({labels!r})


@app.task(name="buildfarm.run_step")
def run_step(step_id: int) -> None:
    claim = claim_next(ctx, step_id, {node!r}, LABELS)
    with Path({taken!r}).open("a") as taken:
        taken.write(f"{{claim.step_id if claim else 0}} {node}\\n")
"""


@pytest.fixture
def ctx(tmp_path: Path, database_url: str) -> Iterator[FarmContext]:
    """A farm context on the test's database."""
    context = make_test_context(tmp_path, database_url)
    yield context
    context.db.dispose()


def celery_dispatcher(tmp_path: Path, redis_url: str) -> CeleryDispatcher:
    """The farm's dispatcher (its own Celery configuration) queuing tickets on ``redis_url``."""
    settings = load_settings(state_dir=tmp_path / "state", redis_url=redis_url)
    return CeleryDispatcher(make_celery(settings), settings.steps.priorities)


def ready_steps(
    session: object,
    project: str,
    user: str,
    count: int,
    *,
    kind: str = "nightly",
    requires: str = "",
    ready_at: dt.datetime | None = None,
    names: list[str] | None = None,
) -> list[int]:
    """A running build of (project, user) whose ``count`` steps are ready (named ``names``, else
    after the tenant and their index); their ids in order."""
    from sqlalchemy.orm import Session

    assert isinstance(session, Session)
    when = ready_at or dt.datetime.now(dt.UTC)
    build = Build(
        project=project,
        branch="main",
        kind=kind,
        user=user,
        state=BuildState.RUNNING,
        manifest={},
        environment_id="env",
        created_at=when,
    )
    session.add(build)
    session.flush()
    [queue] = fairshare.queue_ids(session, kind, (project, user), [requires]).values()
    steps = [
        Step(
            build_id=build.id,
            name=names[index] if names is not None else f"{project}-{user}-{index}",
            version="1.0",
            origin="test",
            source_sha256=f"{index:064x}",
            tree_hash=f"{index:064x}",
            input_key=f"{build.id:032x}{index:032x}",
            depends_on=[],
            priority=0,
            state=StepState.READY,
            ready_at=when + dt.timedelta(milliseconds=index),
            requires=requires,
            queue_id=queue,
        )
        for index in range(count)
    ]
    session.add_all(steps)
    session.flush()
    return [s.id for s in steps]


def taken(path: Path, count: int) -> list[tuple[int, str]] | None:
    """The (step id, node) the workers claimed, once ``count`` tickets were used (else None)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    if len(lines) < count:
        return None
    return [(int(step), node) for step, node in (line.split() for line in lines)]


@contextmanager
def probe_worker(
    tmp_path: Path,
    node: str,
    queues: str,
    *,
    redis_url: str,
    database_url: str,
    labels: frozenset[str] = frozenset(),
) -> Iterator[Path]:
    """A real Celery worker named ``node`` consuming ``queues``; yields the file of what it took."""
    module = f"probe_{node.replace('-', '_')}"
    record = tmp_path / "taken"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            PROBE.format(
                state=str(tmp_path / "state"),
                redis=redis_url,
                root=str(tmp_path),
                database=database_url,
                labels=sorted(labels),
                node=node,
                taken=str(record),
            )
        )
    )
    log_path = tmp_path / f"{module}.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                module,
                "worker",
                "--pool=solo",
                "--concurrency=1",
                "-n",
                f"{node}@probe",
                "-Q",
                queues,
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "WARNING",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS)])},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        yield record
    finally:
        worker.terminate()
        worker.wait(30)


def wait_taken(record: Path, count: int, what: str) -> list[tuple[int, str]]:
    return wait_for(lambda: taken(record, count), 120, f"{what} (logs: probe_*.log)")
