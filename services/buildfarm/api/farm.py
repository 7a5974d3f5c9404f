"""The API's farm-wide routes: health, who the caller is, the farm's status, the caller's projects."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import APIRouter

from buildfarm import accounts
from buildfarm.accounts import Principal, policy
from buildfarm.api.auth import Caller
from buildfarm.api.limits import Limits
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.model.settings import Settings
from buildfarm.state.models import Build
from buildfarm_client.models import HealthOut, NodeOut, ProjectOut, RunningStepOut, StatusOut, WhoAmI

FarmStatusSource = Callable[[Principal], StatusOut]
"""What ``/status`` answers for a caller: :func:`remote_status` on a farm's network API, the
local farm's own (its state directory and processes as well) in-process."""

NODES_CACHE_SECONDS = 5.0
"""Asking every node (Celery ping) takes up to a second: answers are reused this long."""


class NodeCache:
    """The nodes that answer a Celery ping, asked at most every NODES_CACHE_SECONDS."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.at = 0.0
        self.nodes: dict[str, NodeOut] = {}

    def get(self) -> dict[str, NodeOut]:
        if time.monotonic() - self.at > NODES_CACHE_SECONDS:
            from buildfarm.dispatch.celery_app import make_celery

            try:
                inspect = make_celery(self.settings).control.inspect(timeout=0.5)
                active = inspect.active() or {}
            except Exception:  # broker down: no node answers
                active = {}
            self.nodes = {
                name.split("@", 1)[0]: NodeOut(online=True, active_tasks=len(tasks))
                for name, tasks in active.items()
            }
            self.at = time.monotonic()
        return self.nodes


def queue_lengths(limits: Limits) -> Callable[[], dict[str, int]]:
    """Messages waiting in the builds and control queues, every priority counted."""
    from buildfarm.dispatch.celery_app import BUILD_QUEUE, CONTROL_QUEUE
    from buildfarm.model.settings import MAX_PRIORITY

    def lengths() -> dict[str, int]:
        # kombu keeps each Redis priority of a queue in a list of its own: <queue>\x06\x16<priority>
        pipe = limits.client.pipeline()
        names = [
            (q, q if p == 0 else f"{q}\x06\x16{p}")
            for q in (BUILD_QUEUE, CONTROL_QUEUE)
            for p in range(MAX_PRIORITY + 1)
        ]
        for _queue, key in names:
            pipe.llen(key)
        totals = dict.fromkeys((BUILD_QUEUE, CONTROL_QUEUE), 0)
        for (queue, _key), length in zip(names, pipe.execute(), strict=True):
            totals[queue] += int(length)
        return totals

    return lengths


def remote_status(farm: FarmContext, limits: Limits, nodes: NodeCache) -> FarmStatusSource:
    """The nodes that answer, the queue lengths and the running steps the caller may see."""
    queues = queue_lengths(limits)

    def status(principal: Principal) -> StatusOut:
        steps = control.running_steps(farm)
        scope = policy.project_scope(principal)
        if scope is not None:
            steps = [s for s in steps if _project_of(farm, s["build"]) in scope]
        return StatusOut(
            nodes=nodes.get(),
            queues=queues(),
            running_steps=[RunningStepOut.model_validate(s) for s in steps],
        )

    return status


def farm_router(farm: FarmContext, status_of: FarmStatusSource) -> APIRouter:
    """``/health``, ``/whoami``, ``/status`` and ``/projects`` over ``farm``."""
    router = APIRouter(tags=["farm"])

    @router.get("/health", response_model=HealthOut)
    def health() -> HealthOut:
        return HealthOut(status="ok")

    @router.get("/whoami", response_model=WhoAmI)
    def whoami(principal: Caller) -> WhoAmI:
        return WhoAmI(
            user=principal.user, admin=principal.admin, roles={p: r.value for p, r in principal.roles.items()}
        )

    @router.get("/status", response_model=StatusOut, response_model_exclude_unset=True)
    def status(principal: Caller) -> StatusOut:
        return status_of(principal)

    @router.get("/projects", response_model=list[ProjectOut])
    def projects(principal: Caller) -> list[ProjectOut]:
        every = accounts.list_projects(farm) if policy.is_admin(principal) else []
        return [ProjectOut(name=p, role=r.value) for p, r in policy.roles(principal, every).items()]

    return router


def _project_of(farm: FarmContext, build_id: int) -> str:
    with farm.db.session() as session:
        build = session.get(Build, build_id)
        return build.project if build else ""
