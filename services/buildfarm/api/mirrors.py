"""The API's mirror routes: list the configured 3rd-party mirrors, sync one (admins only).

A sync answers when it is done: Pulp's sync, publication and distribution switch are each
bounded by ``pulp_task_timeout_seconds`` on the farm, so the request is bounded too; clients
give this one request a read timeout of their own (``buildfarm mirror sync --timeout``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from pydantic import BaseModel

from buildfarm import mirrors
from buildfarm.accounts import ForbiddenError, Principal
from buildfarm.engine.context import FarmContext


class MirrorOut(BaseModel):
    name: str
    url: str
    distribution: str
    components: list[str]
    architectures: list[str]
    source: str | None  # the apt line builds use once the mirror is usable, else null


class MirrorSyncOut(BaseModel):
    name: str
    source: str
    packages: int
    version: str
    seconds: float


def mirror_router(prefix: str, farm: FarmContext, auth: Callable[..., Principal]) -> APIRouter:
    """``GET {prefix}/mirrors`` and ``POST {prefix}/mirrors/{name}/sync`` over ``farm``."""
    router = APIRouter(prefix=prefix, tags=["mirrors"])

    @router.get("/mirrors", response_model=list[MirrorOut])
    def list_mirrors(principal: Principal = Depends(auth)) -> list[MirrorOut]:
        return [
            MirrorOut.model_validate(view, from_attributes=True)
            for view in mirrors.list_mirrors(farm.settings, farm.repo)
        ]

    @router.post("/mirrors/{name}/sync", response_model=MirrorSyncOut)
    def sync_mirror(
        name: Annotated[str, PathParam(min_length=1, max_length=100)],
        principal: Principal = Depends(auth),
    ) -> MirrorSyncOut:
        if not principal.admin:
            raise ForbiddenError(f"{principal.user} is not an admin: only admins sync mirrors")
        status = mirrors.sync_mirror(farm.settings, farm.repo, name)
        return MirrorSyncOut.model_validate(status, from_attributes=True)

    return router
