"""Priority classes (issue 16): a free node takes the queued step of the highest build kind first.

Real parts: the farm's own Celery configuration (``make_celery``) and dispatcher on a private
Redis, and a real Celery worker (one process, one step at a time, as a build node runs) whose
``buildfarm.run_step`` only records the step it was given.  Steps of a nightly mass rebuild and a
personal build are queued first; an on-demand and a release build's steps are queued after them;
the worker must take release, then on-demand, then nightly in arrival order, then personal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from buildfarm.dispatch.celery_app import BUILD_QUEUE
from buildfarm.model.errors import PermanentError
from buildfarm.model.settings import load_settings

from dispatchkit import celery_dispatcher
from helpers import wait_for

pytestmark = pytest.mark.integration

WORKER = """
from pathlib import Path

from buildfarm.dispatch.celery_app import make_celery
from buildfarm.model.settings import load_settings

app = make_celery(load_settings(state_dir={state!r}, redis_url={url!r}))
app.conf.include = ()  # not the farm's tasks: only this probe


@app.task(name="buildfarm.run_step")
def run_step(step_id: int) -> None:
    with Path({taken!r}).open("a") as taken:
        taken.write(f"{{step_id}}\\n")
"""


def _taken(path: Path, count: int) -> list[int] | None:
    """The step ids the worker took, once it has taken ``count`` of them (else None)."""
    lines = path.read_text().split() if path.is_file() else []
    return [int(line) for line in lines] if len(lines) == count else None


def test_release_steps_are_taken_before_queued_nightly_steps(redis_flush: str, tmp_path: Path) -> None:
    dispatcher = celery_dispatcher(tmp_path, redis_flush)
    queued = [
        (1, "nightly"),
        (2, "nightly"),
        (3, "personal"),
        (4, "nightly"),
        (5, "on-demand"),
        (6, "release"),
    ]
    for step_id, kind in queued:
        dispatcher.run_step(step_id, 1, kind)

    taken = tmp_path / "taken"
    (tmp_path / "probe_app.py").write_text(
        textwrap.dedent(WORKER.format(state=str(tmp_path / "state"), url=redis_flush, taken=str(taken)))
    )
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "probe_app",
                "worker",
                "--pool=solo",
                "--concurrency=1",
                "-Q",
                BUILD_QUEUE,
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "WARNING",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            order = wait_for(
                lambda: _taken(taken, len(queued)),
                120,
                "the worker to take every queued step (log: worker.log)",
            )
        finally:
            worker.terminate()
            worker.wait(30)

    assert order == [6, 5, 1, 2, 4, 3]


def test_priorities_are_checked_at_start(tmp_path: Path) -> None:
    assert load_settings(state_dir=tmp_path, build_priorities={"nightly": 1}).steps.priorities == {
        "release": 0,
        "on-demand": 3,
        "nightly": 1,
        "personal": 9,
    }
    with pytest.raises(PermanentError, match=r"unknown build kind.*relase"):
        load_settings(state_dir=tmp_path, build_priorities={"relase": 0})
    with pytest.raises(PermanentError, match=r"0 \(first\) to 9"):
        load_settings(state_dir=tmp_path, build_priorities={"release": 10})
