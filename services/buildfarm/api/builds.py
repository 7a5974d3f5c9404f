"""The API's build routes: submit, list, show, cancel and retry builds.

A submit names its ``path`` trees by the sha256 of tarballs uploaded before (see
:mod:`buildfarm.api.sources`); the farm unpacks them and submits like the local CLI does.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from buildfarm.accounts import policy
from buildfarm.api.auth import BuildId, Caller, visible_build
from buildfarm.api.follow import changes_after
from buildfarm.api.limits import Limits
from buildfarm.api.uploads import unpack_files, unpack_trees
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.model import names
from buildfarm.model.manifest import parse_manifest
from buildfarm.model.types import BuildKind, BuildState
from buildfarm.state.models import Build
from buildfarm_client.models import BuildChangesIn, BuildPageOut, BuildView, SubmitIn


def builds_router(farm: FarmContext, limits: Limits | None) -> APIRouter:
    """``/builds`` and ``/builds/{id}/...`` over ``farm``; without ``limits`` no running-build cap."""
    router = APIRouter(tags=["builds"])

    @router.post("/builds", response_model=BuildView, status_code=201)
    def submit(body: SubmitIn, principal: Caller) -> BuildView:
        manifest = parse_manifest(body.manifest, "manifest")
        policy.require_submit(farm, principal, manifest)
        with tempfile.TemporaryDirectory(dir=farm.work_root, prefix="submit-") as scratch:
            root = Path(scratch)
            prepared = unpack_trees(farm, "packages", manifest.packages, body.sources, root)
            contexts = unpack_trees(farm, "images", manifest.images, body.contexts, root)
            files = unpack_files(farm, len(manifest.packages), body.files, root)
            build_id = submit_build(
                farm,
                manifest,
                root,
                principal.user,
                prepared,
                prepared_contexts=contexts,
                prepared_files=files,
                recording=(
                    (
                        lambda: limits.running_cap(
                            principal.user, lambda: _running_builds(farm, principal.user)
                        )
                    )
                    if limits
                    else nullcontext
                ),
            )
        return control.show_build(farm, build_id)

    @router.get("/builds", response_model=BuildPageOut)
    def list_builds(  # noqa: PLR0917 - FastAPI reads query parameters from the signature
        principal: Caller,
        project: Annotated[str | None, Query(max_length=100)] = None,
        branch: Annotated[str | None, Query(max_length=100)] = None,
        kind: BuildKind | None = None,
        state: BuildState | None = None,
        user: Annotated[str | None, Query(max_length=100)] = None,
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
        per_page: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> BuildPageOut:
        for value, what in ((project, "project"), (user, "user")):
            if value:
                names.check_simple_name(value, what)
        if branch:
            names.check_ref_name(branch, "branch")
        scope = policy.project_scope(principal)
        return control.page_builds(
            farm,
            project,
            branch,
            state.value if state else None,
            per_page,
            kind=kind.value if kind else None,
            user=user,
            page=page,
            viewer=None if scope is None else (principal.user, policy.maintained(principal)),
            projects=scope,
        )

    @router.get("/builds/{build_id}", response_model=BuildView)
    def show(build_id: BuildId, principal: Caller) -> BuildView:
        return visible_build(farm, principal, build_id)

    @router.post("/builds/{build_id}/changes", response_model=BuildView)
    async def changes(build_id: BuildId, body: BuildChangesIn, principal: Caller) -> BuildView:
        """The build with only the steps that changed since the caller's ``known`` revisions;
        with ``wait_seconds``, once one did or the build left ``state`` (:mod:`.follow`)."""
        return await changes_after(
            farm,
            build_id,
            body.known,
            body.state,
            wait=body.wait_seconds,
            state_only=body.state_only,
            check=lambda view: policy.require_view(principal, view),
        )

    @router.post("/builds/{build_id}/cancel", response_model=BuildView)
    def cancel(build_id: BuildId, principal: Caller) -> BuildView:
        policy.require_change(principal, visible_build(farm, principal, build_id), "cancel")
        return control.cancel_build(farm, build_id)

    @router.post("/builds/{build_id}/retry", response_model=BuildView)
    def retry(build_id: BuildId, principal: Caller) -> BuildView:
        policy.require_change(principal, visible_build(farm, principal, build_id), "retry")
        return control.retry_build(farm, build_id)

    return router


def _running_builds(farm: FarmContext, user: str) -> int:
    with farm.db.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Build)
                .where(Build.user == user, Build.state.in_([BuildState.RUNNING, BuildState.PUBLISHING]))
            )
            or 0
        )
