"""The API's data-lifecycle routes: run the retention sweep (or its dry run), the storage report.

Both are for admins only: a sweep deletes builds of every project, and the report shows every
project's sizes.  A sweep answers when it is done; its work grows with what expires (see
:mod:`buildfarm.retention.sweep`), so clients give this one request a long read timeout.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Query

from buildfarm import retention
from buildfarm.accounts import policy
from buildfarm.api.auth import Caller
from buildfarm.engine.context import FarmContext
from buildfarm.retention import Progress
from buildfarm_client.models import StorageReportOut, SweepReportOut


def retention_router(farm: FarmContext, progress: Callable[[], Progress | None] | None = None) -> APIRouter:
    """``POST /retention/run`` and ``GET /storage`` over ``farm``; ``progress`` gives a sweep the
    callback to report to (the local CLI draws its bars from it), if any."""
    router = APIRouter(tags=["retention"])

    @router.post("/retention/run", response_model=SweepReportOut)
    def run_retention(
        principal: Caller,
        dry_run: bool = Query(default=False, description="only report what would go"),
    ) -> SweepReportOut:
        policy.require_admin(principal, "run the retention sweep")
        return retention.run_sweep(farm, dry_run=dry_run, progress=progress() if progress else None)

    @router.get("/storage", response_model=StorageReportOut)
    def storage(principal: Caller) -> StorageReportOut:
        policy.require_admin(principal, "see the storage report")
        return retention.storage_report(farm)

    return router
