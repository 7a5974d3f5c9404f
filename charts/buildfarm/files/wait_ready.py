"""Init container of every farm pod: wait until what the farm needs at start is there.

The farm's schema is migrated by the bootstrap Job and the buckets are made by the minio-buckets
Job, both ordinary resources of the release (not hooks), created with the Deployments: this
waits until the database's Alembic revision is the one this image's code expects (so a new pod
never meets an old schema) and the artifact bucket exists. Bounded: argv[1] seconds, then one
line saying what is missing and exit 1 (the pod restarts its init container and waits again).
"""

import sys
import time

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from buildfarm.model.errors import BuildfarmError
from buildfarm.model.settings import settings_at_start
from buildfarm.state.db import alembic_config
from buildfarm.wiring import make_store


def missing(settings, head):
    """What is not ready yet, as one line; None when everything is."""
    try:
        engine = create_engine(settings.effective_database_url)
        try:
            with engine.connect() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
        finally:
            engine.dispose()
    except Exception as exc:  # any failure means "not yet", reported as one line
        return f"database unreachable: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    if current != head:
        return f"schema at revision {current}, this image needs {head} (the bootstrap Job migrates it)"
    if settings.storage.kind == "s3":
        try:
            make_store(settings).check()
        except BuildfarmError as exc:
            return f"artifact store not ready: {exc}"
    return None


def main(limit):
    settings = settings_at_start()
    head = ScriptDirectory.from_config(alembic_config(settings.effective_database_url)).get_current_head()
    deadline = time.monotonic() + limit
    while True:
        why = missing(settings, head)
        if why is None:
            print(f"wait-ready: schema at {head}, artifact store ready")
            return 0
        if time.monotonic() > deadline:
            print(f"wait-ready: gave up after {limit:.0f} s: {why}", file=sys.stderr)
            return 1
        print(f"wait-ready: waiting: {why}", flush=True)
        time.sleep(5)


sys.exit(main(float(sys.argv[1])))
