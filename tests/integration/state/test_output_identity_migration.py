"""0014: a farm upgraded with builds under way keeps building them, by input key as before."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from alembic import command
from sqlalchemy import MetaData, create_engine, insert

from buildfarm.engine import control
from buildfarm.engine.advance import advance_build
from buildfarm.state.db import alembic_config

from farmkit import dispatcher, make_test_context


def test_an_upgrade_leaves_earlier_steps_without_identities_and_releases_them(
    database_url: str, tmp_path: Path
) -> None:
    command.upgrade(alembic_config(database_url), "0011")
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    old = create_engine(database_url)
    try:
        tables = MetaData()
        tables.reflect(old, only=["builds", "steps"])
        step = {
            "build_id": 1,
            "version": "1.0",
            "origin": "src",
            "source_sha256": "a" * 64,
            "tree_hash": "b" * 64,
            "priority": 0,
            "kind": "package",
        }
        with old.begin() as conn:
            conn.execute(
                insert(tables.tables["builds"]).values(
                    id=1, project="proj", branch="main", kind="nightly", user="alice", state="running",
                    manifest={}, environment_id="env", created_at=now,
                )
            )  # fmt: skip
            conn.execute(
                insert(tables.tables["steps"]),
                [
                    step | {"id": 1, "name": "lib", "input_key": "c" * 64, "depends_on": [],
                            "state": "succeeded", "attempt": 1, "finished_at": now},
                    step | {"id": 2, "name": "app", "input_key": "d" * 64, "depends_on": ["lib"],
                            "state": "pending", "attempt": 0, "finished_at": None},
                ],
            )  # fmt: skip
    finally:
        old.dispose()

    ctx = make_test_context(tmp_path, database_url)  # upgrades to the head
    try:
        advance_build(ctx, 1)
        steps = {s.name: s for s in control.show_build(ctx, 1).steps}
        assert (steps["lib"].output_identity, steps["lib"].reuse_reason) == (None, None)
        assert steps["app"].state == "ready"  # no identities to compare: released to be built
        assert [step_id for step_id, _ in dispatcher(ctx).runs] == [2]
    finally:
        ctx.db.dispose()
