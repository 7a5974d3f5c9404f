"""Alembic environment: migrations run against the URL the farm passes in, never a file's."""

from alembic import context
from sqlalchemy import create_engine, pool

from buildfarm.state.models import Base

config = context.config
url: str = config.get_main_option("sqlalchemy.url") or ""


def run() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
