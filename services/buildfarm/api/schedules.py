"""The API's schedule route: the configured scheduled builds, their next and last runs.

A caller sees the schedules of the projects it may view (admins: all).  Schedules are
configuration (setting ``schedules``), so there is nothing to change through the API.
"""

from __future__ import annotations

from fastapi import APIRouter

from buildfarm import schedules
from buildfarm.accounts import policy
from buildfarm.api.auth import Caller
from buildfarm.engine.context import FarmContext
from buildfarm.state.models import utcnow
from buildfarm_client.models import ScheduleOut


def schedules_router(farm: FarmContext) -> APIRouter:
    """``GET /schedules`` over ``farm``."""
    router = APIRouter(tags=["schedules"])

    @router.get("/schedules", response_model=list[ScheduleOut])
    def list_schedules(principal: Caller) -> list[ScheduleOut]:
        return [
            view
            for view in schedules.list_schedules(farm, utcnow())
            if policy.may_view(principal, view.project)
        ]

    return router
