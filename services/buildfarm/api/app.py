"""The FastAPI application: builds, sources, logs, apt lines and administration over HTTP.

Every handler checks the caller's token and role, then calls the same engine functions the
local CLI calls; nothing here knows which backends the farm runs on.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import redis
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse, StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from buildfarm import accounts, retention
from buildfarm.accounts import AuthError, ForbiddenError, Principal
from buildfarm.api import errors
from buildfarm.api.errors import BadSourceError, TooLargeError
from buildfarm.api.limits import AnonymousLimit, Limits, client_address
from buildfarm.api.mirrors import mirror_router
from buildfarm.api.repokey import repo_key_router
from buildfarm.api.retention import retention_router
from buildfarm.api.schedules import schedule_router
from buildfarm.api.schemas import (
    SHA256_PATTERN,
    BuildPageOut,
    GrantIn,
    HealthOut,
    MissingIn,
    MissingOut,
    NodeOut,
    ProjectIn,
    ProjectOut,
    SourceOut,
    SourcesOut,
    StatusOut,
    SubmitIn,
    TokenIn,
    TokenOut,
    UserIn,
    UserOut,
    WhoAmI,
)
from buildfarm.api.uploads import accept_tarball, unpack_files, unpack_trees
from buildfarm.dispatch.context import make_context
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.model import names
from buildfarm.model.errors import NotFoundError, PermanentError
from buildfarm.model.manifest import parse_manifest
from buildfarm.model.settings import Settings
from buildfarm.model.types import BuildKind, BuildState
from buildfarm.state.models import Build, Role

API = "/api/v1"
UPLOAD_CHUNK = 1 << 20
FOLLOW_POLL_SECONDS = 0.5
NODES_CACHE_SECONDS = 5.0
"""Asking every node (Celery ping) takes up to a second: answers are reused this long."""


class _NodeCache:
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


def _auth(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
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


Caller = Annotated[Principal, Depends(_auth)]
BuildId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


def create_app(settings: Settings, ctx: FarmContext | None = None) -> FastAPI:
    """The API over the farm described by ``settings``."""
    farm = ctx or make_context(settings)
    if not settings.broker.url:
        raise PermanentError("the API needs Redis (rate limits, dispatch): set BUILDFARM_REDIS_URL")
    limits = Limits(
        redis.Redis.from_url(settings.broker.url, socket_timeout=5, socket_connect_timeout=5),
        settings.api.rate_per_minute,
        settings.api.max_running_builds,
        settings.api.anonymous_rate_per_minute,
    )
    farm.store.check()
    farm.repo.check()
    accounts.ensure_projects(farm, settings.projects)
    nodes = _NodeCache(settings)
    app = FastAPI(
        title="buildfarm",
        version="1",
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
        redoc_url=None,
        responses=errors.ERROR_RESPONSES,
    )
    errors.install(app)
    app.add_middleware(AnonymousLimit, limits=limits, exempt=frozenset({f"{API}/health"}))
    app.state.farm = farm
    app.state.limits = limits

    def visible_build(principal: Principal, build_id: int) -> control.BuildView:
        view = control.show_build(farm, build_id)
        if (
            view.kind == BuildKind.PERSONAL
            and view.user != principal.user
            and not principal.has(view.project, Role.MAINTAINER)
        ):
            raise NotFoundError(f"build {build_id} does not exist")
        principal.require(view.project, Role.VIEWER, "see builds")
        return view

    def may_change(principal: Principal, view: control.BuildView, action: str) -> None:
        if view.user == principal.user:
            principal.require(view.project, Role.BUILDER, action)
        else:
            principal.require(view.project, Role.MAINTAINER, f"{action} another user's build")

    app.include_router(mirror_router(API, farm, _auth))
    app.include_router(schedule_router(API, farm, _auth))
    app.include_router(retention_router(API, farm, _auth))
    app.include_router(repo_key_router(API, farm))

    @app.get(f"{API}/health", response_model=HealthOut, tags=["farm"])
    def health() -> HealthOut:
        return HealthOut(status="ok")

    @app.get(f"{API}/whoami", response_model=WhoAmI, tags=["farm"])
    def whoami(principal: Caller) -> WhoAmI:
        return WhoAmI(
            user=principal.user, admin=principal.admin, roles={p: r.value for p, r in principal.roles.items()}
        )

    @app.get(f"{API}/status", response_model=StatusOut, tags=["farm"])
    def status(principal: Caller) -> StatusOut:
        from buildfarm.dispatch.celery_app import BUILD_QUEUE, CONTROL_QUEUE

        queues = {q: int(limits.client.llen(q)) for q in (BUILD_QUEUE, CONTROL_QUEUE)}
        steps = control.running_steps(farm)
        if not principal.admin:
            steps = [s for s in steps if _project_of(farm, s["build"]) in principal.roles]
        return StatusOut(nodes=nodes.get(), queues=queues, running_steps=steps)

    @app.get(f"{API}/projects", response_model=list[ProjectOut], tags=["farm"])
    def projects(principal: Caller) -> list[ProjectOut]:
        if principal.admin:
            return [ProjectOut(name=n, role=Role.MAINTAINER.value) for n in accounts.list_projects(farm)]
        return [ProjectOut(name=p, role=r.value) for p, r in sorted(principal.roles.items())]

    @app.post(f"{API}/sources/missing", response_model=MissingOut, tags=["sources"])
    def sources_missing(body: MissingIn, principal: Caller) -> MissingOut:
        _require_builder(principal)
        return MissingOut(missing=[h for h in dict.fromkeys(body.sha256) if not farm.store.has(h)])

    @app.put(
        f"{API}/sources/{{sha256}}",
        response_model=SourceOut,
        status_code=201,
        tags=["sources"],
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
        _require_builder(principal)
        limit = settings.api.max_upload_bytes
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

    @app.post(f"{API}/builds", response_model=control.BuildView, status_code=201, tags=["builds"])
    def submit(body: SubmitIn, principal: Caller) -> control.BuildView:
        manifest = parse_manifest(body.manifest, "manifest")
        if not accounts.project_exists(farm, manifest.project):
            raise NotFoundError(f"project {manifest.project!r} does not exist (an admin adds it)")
        needed = Role.MAINTAINER if manifest.kind == BuildKind.RELEASE else Role.BUILDER
        principal.require(manifest.project, needed, f"submit {manifest.kind.value} builds")
        with tempfile.TemporaryDirectory(dir=farm.work_root, prefix="submit-") as scratch:
            root = Path(scratch)
            prepared = unpack_trees(farm, "packages", manifest.packages, body.sources, root)
            contexts = unpack_trees(farm, "images", manifest.images, body.contexts, root)
            files = unpack_files(farm, len(manifest.packages), body.files, root)
            with limits.running_cap(principal.user, lambda: _running_builds(farm, principal.user)):
                build_id = submit_build(
                    farm,
                    manifest,
                    root,
                    principal.user,
                    prepared,
                    prepared_contexts=contexts,
                    prepared_files=files,
                )
        return control.show_build(farm, build_id)

    @app.get(f"{API}/builds", response_model=BuildPageOut, tags=["builds"])
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
        scope = None if principal.admin else sorted(principal.roles)
        maintained = [p for p in principal.roles if principal.has(p, Role.MAINTAINER)]
        result = control.page_builds(
            farm,
            project,
            branch,
            state.value if state else None,
            per_page,
            kind=kind.value if kind else None,
            user=user,
            offset=(page - 1) * per_page,
            viewer=None if principal.admin else (principal.user, maintained),
            projects=scope,
        )
        return BuildPageOut(items=result.items, page=page, per_page=per_page, total=result.total)

    @app.get(f"{API}/builds/{{build_id}}", response_model=control.BuildView, tags=["builds"])
    def show(build_id: BuildId, principal: Caller) -> control.BuildView:
        return visible_build(principal, build_id)

    @app.get(
        f"{API}/builds/{{build_id}}/steps/{{step}}/log",
        tags=["builds"],
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def step_log(
        build_id: BuildId,
        step: Annotated[str, PathParam(max_length=200)],
        principal: Caller,
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
        follow: bool = False,
    ) -> Response:
        visible_build(principal, build_id)
        key, live = control.step_log_key(farm, build_id, step)
        if not follow:
            chunk, next_offset = farm.store.read_log(key, offset) if key else (b"", offset)
            return PlainTextResponse(
                chunk, headers={"X-Next-Offset": str(next_offset), "X-Step-Live": "1" if live else "0"}
            )
        deadline = time.monotonic() + settings.api.follow_seconds

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

    @app.post(f"{API}/builds/{{build_id}}/cancel", response_model=control.BuildView, tags=["builds"])
    def cancel(build_id: BuildId, principal: Caller) -> control.BuildView:
        may_change(principal, visible_build(principal, build_id), "cancel")
        return control.cancel_build(farm, build_id)

    @app.post(f"{API}/builds/{{build_id}}/retry", response_model=control.BuildView, tags=["builds"])
    def retry(build_id: BuildId, principal: Caller) -> control.BuildView:
        may_change(principal, visible_build(principal, build_id), "retry")
        return control.retry_build(farm, build_id)

    @app.get(f"{API}/repos/{{project}}/{{branch:path}}/sources", response_model=SourcesOut, tags=["repos"])
    def repo_sources(
        project: Annotated[str, PathParam(max_length=100)],
        branch: Annotated[str, PathParam(max_length=100)],
        principal: Caller,
        build: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    ) -> SourcesOut:
        principal.require(project, Role.VIEWER, "see repositories")
        if build is not None:
            visible_build(principal, build)
        source = control.apt_sources(farm, project, branch, build)
        return SourcesOut(
            line=source.line(),
            url=source.url,
            suite=source.suite,
            components=list(source.components),
            signed_by=source.signed_by,
            source_line=source.source_line(),
        )

    @app.post(f"{API}/admin/users", response_model=UserOut, status_code=201, tags=["admin"])
    def add_user(body: UserIn, principal: Caller) -> UserOut:
        _require_admin(principal)
        accounts.add_user(farm, body.name, admin=body.admin, service=body.service)
        return UserOut(name=body.name, admin=body.admin, service=body.service)

    @app.post(f"{API}/admin/users/{{name}}/tokens", response_model=TokenOut, status_code=201, tags=["admin"])
    def create_token(
        name: Annotated[str, PathParam(max_length=100)], body: TokenIn, principal: Caller
    ) -> TokenOut:
        _require_admin(principal)
        created = accounts.create_token(farm, name, body.name, body.expires_days)
        return TokenOut(id=created.id, user=created.user, token=created.token, expires_at=created.expires_at)

    @app.delete(f"{API}/admin/tokens/{{token_id}}", status_code=204, tags=["admin"])
    def revoke_token(token_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)], principal: Caller) -> Response:
        _require_admin(principal)
        accounts.revoke_token(farm, token_id)
        return Response(status_code=204)

    @app.post(f"{API}/admin/projects", response_model=ProjectOut, status_code=201, tags=["admin"])
    def add_project(body: ProjectIn, principal: Caller) -> ProjectOut:
        _require_admin(principal)
        accounts.add_project(farm, body.name)
        return ProjectOut(name=body.name, role=Role.MAINTAINER.value)

    @app.put(f"{API}/admin/projects/{{project}}/grants/{{user}}", response_model=ProjectOut, tags=["admin"])
    def grant(
        project: Annotated[str, PathParam(max_length=100)],
        user: Annotated[str, PathParam(max_length=100)],
        body: GrantIn,
        principal: Caller,
    ) -> ProjectOut:
        _require_admin(principal)
        accounts.grant(farm, user, project, body.role.value)
        return ProjectOut(name=project, role=body.role.value)

    return app


def _require_admin(principal: Principal) -> None:
    if not principal.admin:
        raise ForbiddenError(f"{principal.user} is not an admin")


def _require_builder(principal: Principal) -> None:
    if not principal.builds_somewhere:
        raise ForbiddenError(f"{principal.user} is not a builder in any project")


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


def _project_of(farm: FarmContext, build_id: int) -> str:
    with farm.db.session() as session:
        build = session.get(Build, build_id)
        return build.project if build else ""
