"""The API's schedule route: the configured scheduled builds, their next and last runs.

A caller sees the schedules of the projects it may view (admins: all).  Schedules are
configuration (setting ``schedules``), so there is nothing to change through the API.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from buildfarm import schedules
from buildfarm.accounts import Principal
from buildfarm.engine.context import FarmContext
from buildfarm.state.models import Role, utcnow


class ScheduleOut(BaseModel):
    name: str
    project: str
    branch: str
    kind: str
    user: str
    cron: str
    source: str
    next_run: str | None  # ISO 8601, UTC
    last_slot: str | None
    last_build: int | None
    # the build's state ("expired" once retention removed it), or without build: "starting",
    # "retrying" (attempt last_attempt of max_attempts failed; the next is at retry_at), "failed"
    last_state: str | None
    last_error: str | None
    last_attempt: int | None
    max_attempts: int | None
    retry_at: str | None  # ISO 8601, UTC


def schedule_router(prefix: str, farm: FarmContext, auth: Callable[..., Principal]) -> APIRouter:
    """``GET {prefix}/schedules`` over ``farm``."""
    router = APIRouter(prefix=prefix, tags=["schedules"])

    @router.get("/schedules", response_model=list[ScheduleOut])
    def list_schedules(principal: Principal = Depends(auth)) -> list[ScheduleOut]:
        return [
            ScheduleOut.model_validate(view, from_attributes=True)
            for view in schedules.list_schedules(farm, utcnow())
            if principal.has(view.project, Role.VIEWER)
        ]

    return router
