"""What the migration tests share: a database at an earlier revision, written through that
revision's own tables (reflected), as a farm of that version left it.

``from migrationkit import EarlierFarm, farm_at_0011`` in a test module gives its tests the
fixture: the test's database upgraded to 0011, where builds and steps are added with
:meth:`EarlierFarm.add_build`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest
from alembic import command
from sqlalchemy import MetaData, create_engine, insert

from buildfarm.state.db import alembic_config

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
BUILD: dict[str, Any] = {
    "id": 1,
    "project": "proj",
    "branch": "main",
    "kind": "nightly",
    "user": "alice",
    "state": "running",
    "manifest": {},
    "environment_id": "env",
    "created_at": NOW,
}
STEP: dict[str, Any] = {
    "build_id": 1,
    "version": "1.0",
    "origin": "src",
    "source_sha256": "a" * 64,
    "tree_hash": "b" * 64,
    "depends_on": [],
    "priority": 0,
    "kind": "package",
}


@dataclass(frozen=True)
class EarlierFarm:
    url: str
    now: dt.datetime = NOW

    def add_build(self, steps: list[dict[str, Any]], **build: Any) -> None:
        """Build 1 (``BUILD``, with ``build``'s columns instead) and its ``steps`` (each
        ``STEP`` with its own columns added)."""
        engine = create_engine(self.url)
        try:
            tables = MetaData()
            tables.reflect(engine, only=["builds", "steps"])
            with engine.begin() as conn:
                conn.execute(insert(tables.tables["builds"]).values(BUILD | build))
                conn.execute(insert(tables.tables["steps"]), [STEP | step for step in steps])
        finally:
            engine.dispose()


@pytest.fixture
def farm_at_0011(database_url: str) -> EarlierFarm:
    """The test's database at revision 0011 (before node labels and fair share)."""
    command.upgrade(alembic_config(database_url), "0011")
    return EarlierFarm(database_url)
