"""The API's data-lifecycle routes: run the retention sweep (or its dry run), the storage report.

Both are for admins only: a sweep deletes builds of every project, and the report shows every
project's sizes.  A sweep answers when it is done; its work grows with what expires (see
:mod:`buildfarm.retention.sweep`), so clients give this one request a long read timeout.
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from buildfarm import retention
from buildfarm.accounts import policy
from buildfarm.api.auth import Caller
from buildfarm.engine.context import FarmContext
from buildfarm_client.models import StorageReportOut, SweepReportOut


def retention_router(farm: FarmContext) -> APIRouter:
    """``POST /retention/run`` and ``GET /storage`` over ``farm``."""
    router = APIRouter(tags=["retention"])

    @router.post("/retention/run", response_model=SweepReportOut)
    def run_retention(
        principal: Caller,
        dry_run: bool = Query(default=False, description="only report what would go"),
    ) -> SweepReportOut:
        policy.require_admin(principal, "run the retention sweep")
        return SweepReportOut.model_validate(retention.run_sweep(farm, dry_run=dry_run).as_dict())

    @router.get("/storage", response_model=StorageReportOut)
    def storage(principal: Caller) -> StorageReportOut:
        policy.require_admin(principal, "see the storage report")
        return StorageReportOut.model_validate(retention.storage_report(farm).as_dict())

    return router
