"""The API's account routes (admins only): users, their tokens, projects and roles in them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from fastapi import Path as PathParam

from buildfarm import accounts
from buildfarm.accounts import policy
from buildfarm.api.auth import Caller
from buildfarm.engine.context import FarmContext
from buildfarm.state.models import Role
from buildfarm_client.models import GrantIn, ProjectIn, ProjectOut, TokenIn, TokenOut, UserIn, UserOut


def accounts_router(farm: FarmContext) -> APIRouter:
    """``/admin/users``, ``/admin/users/{name}/tokens``, ``/admin/tokens/{id}``, ``/admin/projects``."""
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.post("/users", response_model=UserOut, status_code=201)
    def add_user(body: UserIn, principal: Caller) -> UserOut:
        policy.require_admin(principal)
        accounts.add_user(farm, body.name, admin=body.admin, service=body.service)
        return UserOut(name=body.name, admin=body.admin, service=body.service)

    @router.post("/users/{name}/tokens", response_model=TokenOut, status_code=201)
    def create_token(
        name: Annotated[str, PathParam(max_length=100)], body: TokenIn, principal: Caller
    ) -> TokenOut:
        policy.require_admin(principal)
        return accounts.create_token(farm, name, body.name, body.expires_days)

    @router.delete("/tokens/{token_id}", status_code=204)
    def revoke_token(token_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)], principal: Caller) -> Response:
        policy.require_admin(principal)
        accounts.revoke_token(farm, token_id)
        return Response(status_code=204)

    @router.post("/projects", response_model=ProjectOut, status_code=201)
    def add_project(body: ProjectIn, principal: Caller) -> ProjectOut:
        policy.require_admin(principal)
        accounts.add_project(farm, body.name)
        return ProjectOut(name=body.name, role=Role.MAINTAINER.value)

    @router.put("/projects/{project}/grants/{user}", response_model=ProjectOut)
    def grant(
        project: Annotated[str, PathParam(max_length=100)],
        user: Annotated[str, PathParam(max_length=100)],
        body: GrantIn,
        principal: Caller,
    ) -> ProjectOut:
        policy.require_admin(principal)
        accounts.grant(farm, user, project, body.role)
        return ProjectOut(name=project, role=body.role)

    return router
