"""The API's mirror routes: list the configured 3rd-party mirrors, sync one (admins only).

A sync answers when it is done: Pulp's sync, publication and distribution switch are each
bounded by ``pulp_task_timeout_seconds`` on the farm, so the request is bounded too; clients
give this one request a read timeout of their own (``buildfarm mirror sync --timeout``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam

from buildfarm import mirrors
from buildfarm.accounts import policy
from buildfarm.api.auth import Caller
from buildfarm.engine.context import FarmContext
from buildfarm_client.models import MirrorOut, MirrorSyncOut


def mirrors_router(farm: FarmContext) -> APIRouter:
    """``GET /mirrors`` and ``POST /mirrors/{name}/sync`` over ``farm``."""
    router = APIRouter(tags=["mirrors"])

    @router.get("/mirrors", response_model=list[MirrorOut])
    def list_mirrors(principal: Caller) -> list[MirrorOut]:
        return mirrors.list_mirrors(farm.settings.mirrors, farm.repo)

    @router.post("/mirrors/{name}/sync", response_model=MirrorSyncOut)
    def sync_mirror(
        name: Annotated[str, PathParam(min_length=1, max_length=100)], principal: Caller
    ) -> MirrorSyncOut:
        policy.require_admin(principal, "sync mirrors")
        return mirrors.sync_mirror(farm.settings.mirrors, farm.repo, name)

    return router
