"""The farm's REST API as typed Python calls: httpx underneath, :mod:`.models` on the wire.

Each method is one request and returns the wire model the server declares for it (the OpenAPI
schema is made from the same models), or raises an :class:`~.errors.ApiError` saying whether
trying again can help.  The bearer token is sent and never shown: not in messages, not in
``repr``.  Long operations (a mirror sync, a retention sweep) answer when done: those calls
take a read timeout of their own.

    with Client("http://farm:8781", token) as farm:
        for build in farm.list_builds(project="web", limit=10):
            print(build.id, build.state)
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from buildfarm_client import errors
from buildfarm_client.limits import DEFAULT_TOKEN_DAYS
from buildfarm_client.models import (
    BuildChangesIn,
    BuildPageOut,
    BuildView,
    HealthOut,
    LogChunk,
    MirrorOut,
    MirrorSyncOut,
    MissingIn,
    MissingOut,
    ProjectOut,
    RepoKeyOut,
    RoleName,
    ScheduleOut,
    SourceOut,
    SourcesOut,
    StatusOut,
    StorageReportOut,
    SubmitIn,
    SweepReportOut,
    TokenIn,
    TokenOut,
    UserIn,
    UserOut,
    WhoAmI,
)

API_PREFIX = "/api/v1"
CONNECT_TIMEOUT_SECONDS = 5.0
"""A farm that does not accept a connection in 5 s is down or unreachable, not slow."""
READ_TIMEOUT_SECONDS = 60.0
"""Longest wait for an answer: a submit reads every debian/control and plans before answering."""
LONG_READ_TIMEOUT_SECONDS = 3600.0
"""Longest wait for a retention sweep or storage report: it answers when done, and its work
grows with what expires, which after a long pause can be a lot."""
PER_PAGE = 200
"""The API's largest page of builds."""
DEFAULT_RETRY_AFTER_SECONDS = 5.0
TEMPORARY_CODES = frozenset({"unavailable", "rate_limited", "too_many_builds"})
TEMPORARY_STATUSES = frozenset({429, 502, 503, 504})
_KINDS: dict[str, type[errors.PermanentApiError]] = {
    "forbidden": errors.ForbiddenError,
    "not_found": errors.NotFoundError,
    "conflict": errors.ConflictError,
    "bad_manifest": errors.BadManifestError,
}

_Model = TypeVar("_Model", bound=BaseModel)


class Client:
    """One farm's API at ``url`` (``http://host:port``), as the user behind ``token``.

    ``transport`` replaces the network: a local farm's transport runs the API in-process,
    ``httpx.MockTransport`` answers in tests.  ``where`` completes "the farm ..." in error
    messages (default ``at <url>``).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = "buildfarm-client",
        where: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.where = where or f"at {self.url}"
        self.has_token = bool(token)
        sent = {"User-Agent": user_agent, "Accept": "application/json", **(headers or {})}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url + API_PREFIX,
            headers=sent,
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport and errors --------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request under ``/api/v1``; an error answer raises the :mod:`.errors` kind it names."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise errors.UnavailableError(
                f"the farm {self.where} did not answer in time ({type(exc).__name__})",
                DEFAULT_RETRY_AFTER_SECONDS,
            ) from exc
        except httpx.TransportError as exc:
            raise errors.UnavailableError(
                f"cannot reach the farm {self.where}: {exc}", DEFAULT_RETRY_AFTER_SECONDS
            ) from exc
        if response.is_error:
            raise self._error(response)
        return response

    def _answer(self, model: type[_Model], method: str, path: str, **kwargs: Any) -> _Model:
        response = self.request(method, path, **kwargs)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise self._unexpected(f"{method} {path}: {_first_problem(exc)}") from exc

    def _answers(self, model: type[_Model], method: str, path: str, **kwargs: Any) -> builtins.list[_Model]:
        response = self.request(method, path, **kwargs)
        try:
            return TypeAdapter(builtins.list[model]).validate_json(response.content)  # type: ignore[valid-type]
        except ValidationError as exc:
            raise self._unexpected(f"{method} {path}: {_first_problem(exc)}") from exc

    def _unexpected(self, what: str) -> errors.ServerError:
        return errors.ServerError(f"unexpected answer from the farm {self.where}: {what}")

    def _error(self, response: httpx.Response) -> errors.ApiError:
        """The error kind an error answer names (see docs/api.md, "Errors")."""
        status = response.status_code
        code, message = f"http_{status}", f"HTTP {status} {response.reason_phrase}".strip()
        try:
            detail = response.json()["error"]
            code, message = str(detail["code"]), str(detail["message"])
        except (ValueError, KeyError, TypeError):
            pass
        if code in TEMPORARY_CODES or status in TEMPORARY_STATUSES:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            if code == "unavailable" or status != 429:
                return errors.UnavailableError(
                    f"the farm {self.where}: {message}", retry_after, code=code, status=status
                )
            return errors.RateLimitedError(
                f"{message} (retry after {retry_after:g} s)", retry_after, code=code, status=status
            )
        if code == "unauthenticated" or status == 401:
            return errors.UnauthenticatedError(f"the farm {self.where}: {message}", code=code, status=status)
        if code in _KINDS:
            return _KINDS[code](message, code=code, status=status)
        if status < 500:  # bad_request, bad_source, invalid, too_large, ...
            return errors.PermanentApiError(message, code=code, status=status)
        return errors.ServerError(f"the farm {self.where} failed: {message}", code=code, status=status)

    # -- farm ------------------------------------------------------------------------------

    def health(self) -> HealthOut:
        return self._answer(HealthOut, "GET", "/health")

    def whoami(self) -> WhoAmI:
        return self._answer(WhoAmI, "GET", "/whoami")

    def status(self) -> StatusOut:
        """Nodes, queues and the running steps the caller may see."""
        return self._answer(StatusOut, "GET", "/status")

    def projects(self) -> builtins.list[ProjectOut]:
        """The projects the caller has a role in, with that role."""
        return self._answers(ProjectOut, "GET", "/projects")

    # -- sources and builds ----------------------------------------------------------------

    def missing_sources(self, digests: builtins.list[str]) -> builtins.list[str]:
        """Which of these uploaded-tarball digests the farm does not have yet."""
        body = MissingIn.model_construct(sha256=digests).model_dump(mode="json")
        return self._answer(MissingOut, "POST", "/sources/missing", json=body).missing

    def upload_source(self, digest: str, data: bytes) -> SourceOut:
        """Upload one source tarball (a packed tree) under its sha256."""
        headers = {"Content-Type": "application/octet-stream"}
        return self._answer(
            SourceOut, "PUT", f"/sources/{quote(digest, safe='')}", content=data, headers=headers
        )

    def submit(self, request: SubmitIn) -> BuildView:
        """Submit a build: the manifest, and the digests of the trees uploaded for it."""
        return self._answer(BuildView, "POST", "/builds", json=request.model_dump(mode="json"))

    def build(self, build_id: int) -> BuildView:
        return self._answer(BuildView, "GET", f"/builds/{int(build_id)}")

    def build_changes(
        self,
        build_id: int,
        known: dict[int, str],
        *,
        state: str | None = None,
        wait: float = 0.0,
        state_only: bool = False,
    ) -> BuildView:
        """The build with only the steps whose revision differs from ``known`` (id -> revision);
        with ``wait`` (seconds) the farm holds the answer until one did (unless ``state_only``) or
        the build's state is no longer ``state`` (a long poll, see :class:`BuildChangesIn`)."""
        body = BuildChangesIn(known=known, state=state, wait_seconds=wait, state_only=state_only).model_dump(
            mode="json", exclude_defaults=True
        )
        timeout = httpx.Timeout(READ_TIMEOUT_SECONDS + wait, connect=CONNECT_TIMEOUT_SECONDS)
        return self._answer(BuildView, "POST", f"/builds/{int(build_id)}/changes", json=body, timeout=timeout)

    def builds_page(self, *, page: int = 1, per_page: int = 50, **filters: str | None) -> BuildPageOut:
        """One page of builds, newest first; filters: project, branch, state, kind, user."""
        params: dict[str, str | int] = {k: v for k, v in filters.items() if v}
        return self._answer(
            BuildPageOut, "GET", "/builds", params=params | {"page": page, "per_page": per_page}
        )

    def iter_builds(self, *, limit: int = 50, **filters: str | None) -> Iterator[BuildView]:
        """Builds newest first, at most ``limit``, reading as many pages as that takes."""
        per_page = max(1, min(PER_PAGE, limit))
        given = 0
        # At most ceil(limit / per_page) pages: each one either fills per_page or is the last.
        for page in range(1, limit // per_page + 2):
            answer = self.builds_page(page=page, per_page=per_page, **filters)
            for item in answer.items:
                if given >= limit:
                    return
                given += 1
                yield item
            if len(answer.items) < per_page or page * per_page >= answer.total:
                return

    def list_builds(self, *, limit: int = 50, **filters: str | None) -> builtins.list[BuildView]:
        return builtins.list(self.iter_builds(limit=limit, **filters))

    def read_log(self, build_id: int, step: str, offset: int = 0) -> LogChunk:
        """A step's log (its latest attempt) from ``offset``; ``live``: the step still runs; ``key``:
        which attempt's log (a follower that sees it change reads the new one from 0)."""
        path = f"/builds/{int(build_id)}/steps/{quote(step, safe='')}/log"
        response = self.request("GET", path, params={"offset": offset})
        chunk = response.content
        try:
            next_offset = int(response.headers.get("X-Next-Offset", offset + len(chunk)))
        except ValueError as exc:
            raise self._unexpected("X-Next-Offset is not a number") from exc
        return LogChunk(
            data=chunk,
            next_offset=next_offset,
            live=response.headers.get("X-Step-Live") == "1",
            key=response.headers.get("X-Log-Key"),
        )

    def cancel(self, build_id: int) -> BuildView:
        return self._answer(BuildView, "POST", f"/builds/{int(build_id)}/cancel")

    def retry(self, build_id: int) -> BuildView:
        return self._answer(BuildView, "POST", f"/builds/{int(build_id)}/retry")

    # -- repositories ----------------------------------------------------------------------

    def repo_sources(self, project: str, branch: str, build_id: int | None = None) -> SourcesOut:
        """The apt lines of a branch's latest build, or of one build."""
        params = {} if build_id is None else {"build": int(build_id)}
        path = f"/repos/{quote(project, safe='')}/{quote(branch, safe='')}/sources"
        return self._answer(SourcesOut, "GET", path, params=params)

    def repo_key(self) -> RepoKeyOut:
        """The public key published repositories are signed with (no token needed)."""
        return self._answer(RepoKeyOut, "GET", "/repos/key")

    # -- accounts (admins) -----------------------------------------------------------------

    def add_user(self, name: str, *, admin: bool = False, service: bool = False) -> UserOut:
        body = UserIn.model_construct(name=name, admin=admin, service=service).model_dump(mode="json")
        return self._answer(UserOut, "POST", "/admin/users", json=body)

    def create_token(self, user: str, name: str = "default", days: int = DEFAULT_TOKEN_DAYS) -> TokenOut:
        # Not checked here: the farm refuses a bad lifetime with its own one-line error.
        body = TokenIn.model_construct(name=name, expires_days=days).model_dump(mode="json")
        return self._answer(TokenOut, "POST", f"/admin/users/{quote(user, safe='')}/tokens", json=body)

    def revoke_token(self, token_id: int) -> None:
        self.request("DELETE", f"/admin/tokens/{int(token_id)}")

    def add_project(self, name: str) -> ProjectOut:
        return self._answer(ProjectOut, "POST", "/admin/projects", json={"name": name})

    def grant(self, user: str, project: str, role: RoleName | str) -> ProjectOut:
        path = f"/admin/projects/{quote(project, safe='')}/grants/{quote(user, safe='')}"
        return self._answer(ProjectOut, "PUT", path, json={"role": role})

    # -- mirrors, schedules, retention -----------------------------------------------------

    def mirrors(self) -> builtins.list[MirrorOut]:
        """The configured 3rd-party mirrors; ``source`` is set on those builds can use now."""
        return self._answers(MirrorOut, "GET", "/mirrors")

    def sync_mirror(self, name: str, timeout: float) -> MirrorSyncOut:
        """Sync one mirror (admins only); the farm answers when done, read for up to ``timeout`` s."""
        wait = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_SECONDS)
        return self._answer(MirrorSyncOut, "POST", f"/mirrors/{quote(name, safe='')}/sync", timeout=wait)

    def schedules(self) -> builtins.list[ScheduleOut]:
        """The configured schedules of the projects the caller may view, next and last runs."""
        return self._answers(ScheduleOut, "GET", "/schedules")

    def run_retention(self, dry_run: bool = False) -> SweepReportOut:
        """Apply the retention policy (admins only); answers when the sweep is done."""
        wait = httpx.Timeout(LONG_READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
        params = {"dry_run": "true" if dry_run else "false"}
        return self._answer(SweepReportOut, "POST", "/retention/run", params=params, timeout=wait)

    def storage_report(self) -> StorageReportOut:
        """Bytes by class, project and branch, and what the next sweep would free (admins only)."""
        wait = httpx.Timeout(LONG_READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
        return self._answer(StorageReportOut, "GET", "/storage", timeout=wait)


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds; a date or nothing: the default)."""
    try:
        return max(0.0, float(value)) if value else DEFAULT_RETRY_AFTER_SECONDS
    except ValueError:
        return DEFAULT_RETRY_AFTER_SECONDS


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the answer"
    return f"{where}: {first['msg']}"
