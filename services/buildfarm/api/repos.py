"""The API's repository routes: a branch's (or a build's) apt lines, and the signing key.

The key is public like the repositories themselves (apt reads them without a token): a user
fetches it once, stores it where the apt lines' ``signed-by`` says, and apt verifies every
Release file.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from buildfarm.accounts import policy
from buildfarm.api.auth import Caller, visible_build
from buildfarm.backends.base import require_signing_key
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm_client.models import RepoKeyOut, SourcesOut


def repos_router(farm: FarmContext) -> APIRouter:
    """``GET /repos/key`` (no token needed) and ``GET /repos/{project}/{branch}/sources``."""
    router = APIRouter(tags=["repos"])

    @router.get("/repos/key", response_model=RepoKeyOut)
    def repo_key() -> RepoKeyOut:
        key = require_signing_key(farm.repo)
        return RepoKeyOut(
            fingerprint=key.fingerprint, public_key=key.public_key, signed_by=farm.settings.signing.keyring
        )

    @router.get("/repos/{project}/{branch:path}/sources", response_model=SourcesOut)
    def repo_sources(
        project: Annotated[str, PathParam(max_length=100)],
        branch: Annotated[str, PathParam(max_length=100)],
        principal: Caller,
        build: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    ) -> SourcesOut:
        policy.require_viewer(principal, project, "see repositories")
        if build is not None:
            visible_build(farm, principal, build)
        source = control.apt_sources(farm, project, branch, build)
        return SourcesOut(
            line=source.line(),
            url=source.url,
            suite=source.suite,
            components=list(source.components),
            signed_by=source.signed_by,
            source_line=source.source_line(),
        )

    return router
