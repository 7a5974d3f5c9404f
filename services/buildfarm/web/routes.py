"""The dashboard's pages: builds, a build's graph and Gantt chart, step logs, nodes, repositories,
schedules.  Server-rendered (Jinja2); htmx swaps in the parts that change while a build runs.

Every page checks the session's principal with the same rules as the API: a viewer of the
project sees its builds, and someone else's personal build only as a maintainer.  Stable URLs:
``/ui/builds/<id>`` and ``/ui/builds/<id>/steps/<name>`` can be shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from sqlalchemy import select
from starlette.templating import Jinja2Templates

from buildfarm import accounts, retention, schedules
from buildfarm.accounts import AuthError, ForbiddenError, Principal, policy
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import BuildfarmError, NotFoundError
from buildfarm.model.types import BuildKind
from buildfarm.state.models import Build, BuildState, Role, StepState, utcnow
from buildfarm.web import activity, graph
from buildfarm.web.session import (
    SESSION_COOKIE,
    RateCounter,
    check_origin,
    form_fields,
    principal_of,
    safe_next,
)
from buildfarm_client.models import BuildView

HERE = Path(__file__).parent
PER_PAGE = 50
LOG_CHUNK_MAX = 256 * 1024
"""Bytes of a log one poll sends; a long log arrives over several polls (the page stays responsive)."""
UTILISATION_HOURS = 6.0
NodesOnline = Callable[[], Mapping[str, Any]]

templates = Jinja2Templates(directory=str(HERE / "templates"))
STATE_LABELS = {
    "reused": "reused",
    **{s.value: s.value for s in StepState},
    **{b.value: b.value for b in BuildState},
}


def dashboard_router(farm: FarmContext, limits: RateCounter, nodes_online: NodesOnline) -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)

    def page(
        request: Request, name: str, principal: Principal | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        return templates.TemplateResponse(
            request, name, {"principal": principal, "labels": STATE_LABELS, **context}, status_code=status
        )

    def visible_build(principal: Principal, build_id: int) -> BuildView:
        """The build if the policy lets the caller see it; a page never tells a build exists
        to someone who may not see it (the API's 403 for a non-viewer is a 404 here)."""
        view = control.show_build(farm, build_id)
        try:
            policy.require_view(principal, view)
        except ForbiddenError as exc:
            raise NotFoundError(f"build {build_id} does not exist") from exc
        return view

    def may_change(principal: Principal, view: BuildView) -> bool:
        try:
            policy.require_change(principal, view, "change")
        except ForbiddenError:
            return False
        return True

    def failure(request: Request, principal: Principal | None, exc: BuildfarmError) -> HTMLResponse:
        status = 404 if isinstance(exc, NotFoundError) else 403 if isinstance(exc, ForbiddenError) else 503
        return page(request, "error.html", principal, status=status, message=str(exc))

    @router.get("", response_class=RedirectResponse)
    @router.get("/", response_class=RedirectResponse)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/builds", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str | None = None) -> HTMLResponse:
        return page(request, "login.html", None, next=safe_next(next), error=None)

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        check_origin(request)
        fields = await form_fields(request)
        token = fields.get("token", "").strip()
        target = safe_next(fields.get("next"))
        try:
            principal = accounts.authenticate(farm, token)
        except AuthError as exc:
            limits.hit_anonymous(request.client.host if request.client else "unknown")
            return page(request, "login.html", None, status=401, next=target, error=str(exc))
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/ui",
        )
        del principal
        return response

    @router.post("/logout")
    def logout(request: Request) -> RedirectResponse:
        check_origin(request)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response

    def listing(request: Request, principal: Principal) -> dict[str, Any]:
        query = request.query_params
        filters = {k: query.get(k) or None for k in ("project", "branch", "kind", "state", "user")}
        try:
            number = max(1, min(int(query.get("page", "1")), 100_000))
        except ValueError:
            number = 1
        maintained = [p for p in principal.roles if principal.has(p, Role.MAINTAINER)]
        result = control.page_builds(
            farm,
            filters["project"],
            filters["branch"],
            filters["state"],
            PER_PAGE,
            kind=filters["kind"],
            user=filters["user"],
            page=number,
            viewer=None if principal.admin else (principal.user, maintained),
            projects=None if principal.admin else sorted(principal.roles),
        )
        kept = {k: v for k, v in filters.items() if v}
        return {
            "builds": result.items,
            "total": result.total,
            "page": number,
            "pages": max(1, -(-result.total // PER_PAGE)),
            "filters": filters,
            "query": urlencode(kept | {"page": number}),
            "prev_query": urlencode(kept | {"page": number - 1}),
            "next_query": urlencode(kept | {"page": number + 1}),
            "kinds": [k.value for k in BuildKind],
            "states": [s.value for s in BuildState],
            "projects": accounts.list_projects(farm) if principal.admin else sorted(principal.roles),
        }

    @router.get("/builds", response_class=HTMLResponse)
    def builds(request: Request) -> HTMLResponse:
        principal = principal_of(request, farm, limits)
        return page(request, "builds.html", principal, **listing(request, principal))

    @router.get("/builds/rows", response_class=HTMLResponse)
    def build_rows(request: Request) -> HTMLResponse:
        principal = principal_of(request, farm, limits)
        return page(request, "build_rows.html", principal, **listing(request, principal))

    def build_context(principal: Principal, build_id: int) -> dict[str, Any]:
        view = visible_build(principal, build_id)
        now = utcnow()
        return {
            "build": view,
            "graph": graph.step_graph(view.steps, now),
            "gantt": graph.gantt(view.steps, now),
            "live": view.state
            not in {s.value for s in (BuildState.SUCCEEDED, BuildState.FAILED, BuildState.CANCELLED)},
            "can_change": may_change(principal, view),
            "counts": view.counts,
        }

    @router.get("/builds/{build_id}", response_class=HTMLResponse)
    def build_page(request: Request, build_id: int) -> HTMLResponse:
        principal = principal_of(request, farm, limits)
        started = time.perf_counter()
        try:
            context = build_context(principal, build_id)
        except BuildfarmError as exc:
            return failure(request, principal, exc)
        response = page(request, "build.html", principal, **context)
        response.headers["Server-Timing"] = f"render;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response

    @router.get("/builds/{build_id}/live", response_class=HTMLResponse)
    def build_live(request: Request, build_id: int) -> HTMLResponse:
        principal = principal_of(request, farm, limits)
        try:
            return page(request, "build_live.html", principal, **build_context(principal, build_id))
        except BuildfarmError as exc:
            return failure(request, principal, exc)

    @router.post("/builds/{build_id}/{action}")
    def change(request: Request, build_id: int, action: str) -> Response:
        principal = principal_of(request, farm, limits)
        try:
            check_origin(request)
            if action not in ("cancel", "retry"):
                raise NotFoundError(f"no action {action!r}")
            view = visible_build(principal, build_id)
            if not may_change(principal, view):
                raise ForbiddenError(f"{principal.user} may not {action} build {build_id}")
            (control.cancel_build if action == "cancel" else control.retry_build)(farm, build_id)
        except BuildfarmError as exc:
            return failure(request, principal, exc)
        return RedirectResponse(f"/ui/builds/{build_id}", status_code=303)

    @router.get("/builds/{build_id}/steps/{step}", response_class=HTMLResponse)
    def step_page(request: Request, build_id: int, step: str) -> HTMLResponse:
        principal = principal_of(request, farm, limits)
        try:
            view = visible_build(principal, build_id)
            found = control.find_step(farm, build_id, step)
            key, live = control.step_log_key(farm, build_id, step)
            text, offset = farm.store.read_log(key, 0) if key else (b"", 0)
        except BuildfarmError as exc:
            return failure(request, principal, exc)
        return page(
            request,
            "step.html",
            principal,
            build=view,
            step=found,
            log=text[-LOG_CHUNK_MAX:].decode("utf-8", "replace"),
            truncated=len(text) > LOG_CHUNK_MAX,
            offset=offset,
            live=live,
        )

    @router.get("/builds/{build_id}/steps/{step}/follow", response_class=HTMLResponse)
    def step_follow(request: Request, build_id: int, step: str, offset: int = 0) -> HTMLResponse:
        principal = principal_of(request, farm, limits)
        try:
            visible_build(principal, build_id)
            key, live = control.step_log_key(farm, build_id, step)
            chunk, next_offset = farm.store.read_log(key, max(0, offset)) if key else (b"", offset)
        except BuildfarmError as exc:
            return failure(request, principal, exc)
        return page(
            request,
            "step_follow.html",
            principal,
            build_id=build_id,
            step_name=step,
            chunk=chunk[:LOG_CHUNK_MAX].decode("utf-8", "replace"),
            offset=offset + min(len(chunk), LOG_CHUNK_MAX) if len(chunk) > LOG_CHUNK_MAX else next_offset,
            live=live or len(chunk) > LOG_CHUNK_MAX,
        )

    @router.get("/builds/{build_id}/steps/{step}/log.txt")
    def step_download(request: Request, build_id: int, step: str) -> Response:
        principal = principal_of(request, farm, limits)
        try:
            visible_build(principal, build_id)
            key, _live = control.step_log_key(farm, build_id, step)
            text = farm.store.read_log(key, 0)[0] if key else b""
        except BuildfarmError as exc:
            return failure(request, principal, exc)
        filename = f"build-{build_id}-{step}.log".replace('"', "")
        return PlainTextResponse(text, headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @router.get("/nodes", response_class=HTMLResponse)
    def nodes(request: Request) -> HTMLResponse:
        principal = principal_of(request, farm, limits)
        online = dict(nodes_online())
        running = [
            s
            for s in control.running_steps(farm)
            if principal.admin or _project_of(farm, int(s["build"])) in principal.roles
        ]
        busy = activity.busy_seconds(farm, utcnow(), UTILISATION_HOURS)
        names = sorted(set(online) | set(busy) | {str(s["node"]) for s in running if s.get("node")})
        window = UTILISATION_HOURS * 3600
        rows = [
            {
                "name": name,
                "online": name in online,
                "running": [s for s in running if s.get("node") == name],
                "utilisation": min(100.0, round(100 * busy.get(name, 0.0) / window, 1)),
            }
            for name in names
        ]
        return page(request, "nodes.html", principal, nodes=rows, hours=UTILISATION_HOURS)

    @router.get("/repos", response_class=HTMLResponse)
    def repos(request: Request) -> HTMLResponse:
        principal = principal_of(request, farm, limits)
        with farm.db.session() as session:
            pairs = session.execute(
                select(Build.project, Build.branch)
                .where(Build.state == BuildState.SUCCEEDED, Build.kind != BuildKind.PERSONAL)
                .distinct()
                .order_by(Build.project, Build.branch)
            ).all()
        lines = []
        for project, branch in pairs:
            if not principal.has(project, Role.VIEWER):
                continue
            try:
                source = control.apt_sources(farm, project, branch)
                lines.append({"project": project, "branch": branch, "line": source.line(), "error": None})
            except BuildfarmError as exc:
                lines.append({"project": project, "branch": branch, "line": None, "error": str(exc)})
        return page(request, "repos.html", principal, repos=lines)

    @router.get("/schedules", response_class=HTMLResponse)
    def schedule_page(request: Request) -> HTMLResponse:
        principal = principal_of(request, farm, limits)
        views = [v for v in schedules.list_schedules(farm, utcnow()) if principal.has(v.project, Role.VIEWER)]
        return page(request, "schedules.html", principal, schedules=views)

    @router.get("/storage", response_class=HTMLResponse)
    def storage(request: Request) -> HTMLResponse:
        principal = principal_of(request, farm, limits)
        if not principal.admin:  # the report shows every project's sizes, as in the API
            return failure(request, principal, ForbiddenError(f"{principal.user} is not an admin"))
        try:
            report = retention.storage_report(farm)
        except BuildfarmError as exc:
            return failure(request, principal, exc)
        groups = sorted(report.groups, key=lambda g: g.output_bytes + g.source_bytes, reverse=True)
        largest = max((g.output_bytes + g.source_bytes for g in groups), default=0) or 1
        bars = [
            {
                "label": f"{g.kind} · {g.project}/{g.branch}",
                "builds": g.builds,
                "bytes": g.output_bytes + g.source_bytes,
                "width": round(600 * (g.output_bytes + g.source_bytes) / largest, 1),
                "y": 8 + i * 26,
            }
            for i, g in enumerate(groups)
        ]
        return page(request, "storage.html", principal, report=report, bars=bars, height=16 + 26 * len(bars))

    return router


def _project_of(farm: FarmContext, build_id: int) -> str:
    with farm.db.session() as session:
        build = session.get(Build, build_id)
        return build.project if build else ""
