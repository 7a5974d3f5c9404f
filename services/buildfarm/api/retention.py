"""The API's data-lifecycle routes: run the retention sweep (or its dry run), the storage report.

Both are for admins only: a sweep deletes builds of every project, and the report shows every
project's sizes.  A sweep answers when it is done; its work grows with what expires (see
:mod:`buildfarm.retention.sweep`), so clients give this one request a long read timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Query

from buildfarm import retention
from buildfarm.accounts import ForbiddenError, Principal
from buildfarm.engine.context import FarmContext


def _require_admin(principal: Principal, what: str) -> None:
    if not principal.admin:
        raise ForbiddenError(f"{principal.user} is not an admin: only admins {what}")


def retention_router(prefix: str, farm: FarmContext, auth: Callable[..., Principal]) -> APIRouter:
    """``POST {prefix}/retention/run`` and ``GET {prefix}/storage`` over ``farm``."""
    router = APIRouter(prefix=prefix, tags=["retention"])

    @router.post("/retention/run")
    def run_retention(
        dry_run: bool = Query(default=False, description="only report what would go"),
        principal: Principal = Depends(auth),
    ) -> dict[str, Any]:
        _require_admin(principal, "run the retention sweep")
        return retention.run_sweep(farm, dry_run=dry_run).as_dict()

    @router.get("/storage")
    def storage(principal: Principal = Depends(auth)) -> dict[str, Any]:
        _require_admin(principal, "see the storage report")
        return retention.storage_report(farm).as_dict()

    return router
