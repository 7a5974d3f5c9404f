"""Who calls: the bearer token's principal (a FastAPI dependency), and the builds they may see.

Every route that needs a caller takes :data:`Caller`; what the caller may do is decided by
:mod:`buildfarm.accounts.policy`, the rules the scheduler checks too.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi import Path as PathParam

from buildfarm import accounts
from buildfarm.accounts import AuthError, Principal, policy
from buildfarm.api.limits import client_address
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm_client.models import BuildView


def authenticate(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller behind the bearer token; counts the request against the token's rate."""
    token = None
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    try:
        principal = accounts.authenticate(request.app.state.farm, token)
    except AuthError:
        if authorization is not None:  # without the header, AnonymousLimit counted it already
            request.app.state.limits.hit_anonymous(client_address(request.client))
        raise
    assert token is not None
    request.app.state.limits.hit(accounts.digest(token)[:24])
    return principal


Caller = Annotated[Principal, Depends(authenticate)]
BuildId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


def visible_build(farm: FarmContext, principal: Principal, build_id: int) -> BuildView:
    """The build, if the caller may see it (another user's personal build: 404)."""
    view = control.show_build(farm, build_id)
    policy.require_view(principal, view)
    return view
