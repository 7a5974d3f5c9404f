"""A step's safe name is written with its row, however the row is written (the ORM, or the
executemany of a submit), from :func:`names.to_safe`: the claim on PostgreSQL keys the
attempt's log from it (``model/logkeys.py``), with no escaping of its own in SQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import insert, select

from buildfarm.model.logkeys import STEP_LOG_KEY, step_log_key
from buildfarm.model.names import to_safe
from buildfarm.state.models import Build, Step

from farmkit import make_test_context

NAMES = ["gcc-12", "lib_foo", "g++", "ünïcode", "日本", "a b/c", "emoji😀", "x.y-Z9"]


def _row(build_id: int, name: str) -> dict[str, object]:
    return {
        "build_id": build_id,
        "name": name,
        "version": "1",
        "origin": "o",
        "source_sha256": "0" * 64,
        "tree_hash": "t",
        "input_key": "k",
        "depends_on": [],
    }


def test_every_way_of_writing_a_step_stores_its_safe_name(tmp_path: Path) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    with ctx.db.session() as session:
        builds = [
            Build(project="p", branch="main", kind="nightly", user="u", manifest={}, environment_id="e")
            for _ in range(2)
        ]
        session.add_all(builds)
        session.flush()
        session.add_all([Step(**_row(builds[0].id, name)) for name in NAMES])
        session.flush()
        session.execute(insert(Step), [_row(builds[1].id, name) for name in NAMES])  # as a submit does
        stored = session.execute(select(Step.build_id, Step.name, Step.safe_name)).all()
    assert sorted(stored) == sorted((build.id, name, to_safe(name)) for build in builds for name in NAMES)
    ctx.db.dispose()


def test_the_log_key_is_one_format() -> None:
    assert step_log_key(3, "a/b", 2) == "logs/3/a_2fb/2.log"
    assert step_log_key(3, "a/b", 2) == STEP_LOG_KEY.format(build_id=3, safe_name=to_safe("a/b"), attempt=2)
