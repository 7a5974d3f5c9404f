"""The API's log route: a step's log (its latest attempt) from an offset, or followed while it runs.

Plain text, not JSON: ``X-Next-Offset`` says where to read on, ``X-Step-Live`` whether the step
still runs, ``X-Log-Key`` which attempt's log this is (it changes when the step is tried again);
``follow=true`` streams until the step ends or ``api_follow_seconds`` pass.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse, StreamingResponse

from buildfarm.api.auth import BuildId, Caller, visible_build
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext

FOLLOW_POLL_SECONDS = 0.5


def logs_router(farm: FarmContext) -> APIRouter:
    """``GET /builds/{id}/steps/{step}/log`` over ``farm``."""
    router = APIRouter(tags=["builds"])

    @router.get(
        "/builds/{build_id}/steps/{step}/log",
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def step_log(
        build_id: BuildId,
        step: Annotated[str, PathParam(max_length=200)],
        principal: Caller,
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
        follow: bool = False,
    ) -> Response:
        visible_build(farm, principal, build_id)
        key, live = control.step_log_key(farm, build_id, step)
        if not follow:
            chunk, next_offset = farm.store.read_log(key, offset) if key else (b"", offset)
            headers = {"X-Next-Offset": str(next_offset), "X-Step-Live": "1" if live else "0"}
            if key:  # a retried step logs anew: a follower starts the new attempt's log from 0
                headers["X-Log-Key"] = key
            return PlainTextResponse(chunk, headers=headers)
        deadline = time.monotonic() + farm.settings.api.follow_seconds

        def stream() -> Iterator[bytes]:
            position, current = offset, key
            while True:
                key_now, still = control.step_log_key(farm, build_id, step)
                if key_now != current:
                    current, position = key_now, 0
                if current:
                    chunk, position = farm.store.read_log(current, position)
                    if chunk:
                        yield chunk
                if not still or time.monotonic() > deadline:
                    return
                time.sleep(FOLLOW_POLL_SECONDS)

        return StreamingResponse(stream(), media_type="text/plain")

    return router
