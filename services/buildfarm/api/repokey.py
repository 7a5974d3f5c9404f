"""The API's signing-key route: the OpenPGP public key the farm signs its repositories with.

Public like the repositories themselves (apt reads them without a token): a user fetches the key
once, stores it where the apt lines' ``signed-by`` says, and apt verifies every Release file.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from buildfarm.backends.base import require_signing_key
from buildfarm.engine.context import FarmContext


class RepoKeyOut(BaseModel):
    fingerprint: str
    public_key: str  # armored
    signed_by: str  # where the farm's apt lines expect it: [signed-by=...]


def repo_key_router(prefix: str, farm: FarmContext) -> APIRouter:
    """``GET {prefix}/repos/key`` over ``farm`` (no token needed)."""
    router = APIRouter(prefix=prefix, tags=["repos"])

    @router.get("/repos/key", response_model=RepoKeyOut)
    def repo_key() -> RepoKeyOut:
        key = require_signing_key(farm.repo)
        return RepoKeyOut(
            fingerprint=key.fingerprint, public_key=key.public_key, signed_by=farm.settings.signing.keyring
        )

    return router
