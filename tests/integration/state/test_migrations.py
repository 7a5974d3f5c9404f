"""The Alembic migrations and the SQLAlchemy models describe the same schema, on both databases.

A model changed without a migration (or the reverse) would pass every test that creates tables
from the models yet break a farm upgraded with ``alembic upgrade``: autogenerate's comparison
after upgrading a fresh database must find nothing to do.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from buildfarm.state.db import upgrade
from buildfarm.state.models import Base


def test_migrations_match_the_models(database_url: str) -> None:
    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
