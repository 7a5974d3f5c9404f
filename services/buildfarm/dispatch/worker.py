"""Entry point for ``celery -A buildfarm.dispatch.worker:app``: the app built from settings.

A worker with ``runner: kubernetes`` runs the builder orphan reaper once when it is ready, so
the steps its previous incarnation on this node held are settled before it builds again.
"""

from typing import Any

from celery.signals import worker_ready

from buildfarm.dispatch.builders import reap_on_worker_start
from buildfarm.dispatch.celery_app import make_celery
from buildfarm.model.settings import settings_at_start

settings = settings_at_start()
app = make_celery(settings)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _reap_builders(sender: Any = None, **_: Any) -> None:
    hostname = getattr(sender, "hostname", None) or ""
    reap_on_worker_start(settings, settings.builders.node or hostname.split("@", 1)[0] or None)
