"""Which environments a farm's builds still name: ``buildfarm env prune`` keeps those.

A build's record names the environment its input keys were computed with; while the build is
kept (retention has not expired it), its steps may be retried or its outputs compared, so its
environment stays in the cache.
"""

from __future__ import annotations

from sqlalchemy import select

from buildfarm.model.settings import Settings
from buildfarm.state.db import Database
from buildfarm.state.models import Build


def digests_named_by_builds(settings: Settings) -> set[str]:
    """Digests of the environments this farm's recorded builds name (none without a database)."""
    if settings.database.url is None and not (settings.state_dir / "buildfarm.db").is_file():
        return set()
    db = Database(settings.effective_database_url)
    try:
        with db.session() as session:
            ids = session.scalars(select(Build.environment_id).distinct()).all()
    finally:
        db.dispose()
    return {i.rsplit(":", 1)[-1] for i in ids if i}
