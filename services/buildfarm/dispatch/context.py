"""Build the farm context every process uses: settings -> database, stores, Celery dispatcher."""

from __future__ import annotations

from buildfarm.dispatch.celery_app import CeleryDispatcher, make_celery
from buildfarm.engine.context import Dispatcher, FarmContext
from buildfarm.model.settings import Settings
from buildfarm.state.db import Database
from buildfarm.wiring import Wiring, make_repository, make_store


def make_context(settings: Settings, dispatcher: Dispatcher | None = None) -> FarmContext:
    """The farm of ``settings``; work is sent through Celery unless another ``dispatcher`` is
    given (a stopped local farm's, which refuses to send)."""
    return FarmContext(
        settings=settings,
        db=Database(settings.effective_database_url),
        store=make_store(settings),
        repo=make_repository(settings),
        dispatcher=dispatcher or CeleryDispatcher(make_celery(settings), settings.steps.priorities),
        parts=Wiring(settings),
    )
