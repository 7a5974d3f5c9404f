"""The API's source routes: which tarballs the farm lacks, and uploading one (builders only).

A client packs each ``path`` tree of a manifest, asks which the farm lacks and uploads only
those; a tarball is checked (safe, within the API's bounds) when it arrives and stored
content-addressed, then named by sha256 in the submit.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from buildfarm import retention
from buildfarm.accounts import policy
from buildfarm.api.auth import Caller
from buildfarm.api.errors import BadSourceError, TooLargeError
from buildfarm.api.uploads import accept_tarball
from buildfarm.engine.context import FarmContext
from buildfarm_client.models import SHA256_PATTERN, MissingIn, MissingOut, SourceOut


def sources_router(farm: FarmContext) -> APIRouter:
    """``POST /sources/missing`` and ``PUT /sources/{sha256}`` over ``farm``."""
    router = APIRouter(tags=["sources"])

    @router.post("/sources/missing", response_model=MissingOut)
    def sources_missing(body: MissingIn, principal: Caller) -> MissingOut:
        policy.require_builder(principal)
        return MissingOut(missing=[h for h in dict.fromkeys(body.sha256) if not farm.store.has(h)])

    @router.put(
        "/sources/{sha256}",
        response_model=SourceOut,
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def upload_source(
        sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN)],
        request: Request,
        response: Response,
        principal: Caller,
    ) -> SourceOut:
        policy.require_builder(principal)
        limit = farm.settings.api.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise TooLargeError(f"source tarball of {declared} bytes is over the {limit}-byte limit")
        if await run_in_threadpool(farm.store.has, sha256):
            response.status_code = 200
            # Recorded again: a recent upload keeps the object from a sweep until it is submitted.
            await run_in_threadpool(retention.record_upload, farm, sha256, principal.user)
            return SourceOut(sha256=sha256, size=int(declared or 0))
        with tempfile.NamedTemporaryFile(dir=farm.work_root, prefix="upload-", delete=False) as handle:
            tmp = Path(handle.name)
            digest, size = hashlib.sha256(), 0
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise TooLargeError(f"source tarball is over the {limit}-byte limit")
                    digest.update(chunk)
                    handle.write(chunk)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        try:
            if digest.hexdigest() != sha256:
                raise BadSourceError(f"uploaded bytes have sha256 {digest.hexdigest()}, not {sha256}")
            stored = await run_in_threadpool(accept_tarball, farm, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        await run_in_threadpool(retention.record_upload, farm, stored.sha256, principal.user, stored.size)
        return SourceOut(sha256=stored.sha256, size=stored.size)

    return router
