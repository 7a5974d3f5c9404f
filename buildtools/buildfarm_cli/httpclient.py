"""A farm's REST API (docs/api.md) as a client: the same data and errors as the local engine.

Submitting packs each ``path`` package and each ``path`` image context of the manifest into the
same deterministic tarball the farm would make (:func:`buildfarm.model.sources.pack_tree`), asks
which of them the farm lacks and uploads only those: resubmitting a tree that changed in one
package sends one tarball.

Error bodies ``{"error": {"code", "message"}}`` become the exceptions the engine raises
locally, so the CLI prints the same line and exits with the same code either way; a farm that
cannot be reached is a :class:`ServiceUnavailableError` (exit 3).  The bearer token is sent and
never shown: not in messages, not in ``repr``.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from buildfarm.accounts import DEFAULT_TOKEN_DAYS, AuthError, CreatedToken, ForbiddenError
from buildfarm.backends.base import AptSource, MirrorStatus
from buildfarm.engine.control import BuildView, StepView
from buildfarm.mirrors import MirrorView
from buildfarm.model.debsource import files_to_upload, pack_files
from buildfarm.model.errors import (
    BuildfarmError,
    ConflictError,
    ManifestError,
    NotFoundError,
    PermanentError,
    ServiceUnavailableError,
    TemporaryError,
)
from buildfarm.model.manifest import ImageSource, PackageSource, load_manifest
from buildfarm.model.sources import pack_tree
from buildfarm.retention import Progress, StorageReport, SweepReport
from buildfarm.schedules import ScheduleView
from buildfarm_cli.views import BUILD_FIELDS, BuildSummary, RepoKeyView, UserView

API_PREFIX = "/api/v1"
CONNECT_TIMEOUT_SECONDS = 5.0
"""A farm that does not accept a connection in 5 s is down or unreachable, not slow."""
READ_TIMEOUT_SECONDS = 60.0
"""Longest wait for an answer: a submit reads every debian/control and plans before answering."""
PER_PAGE = 200
"""The API's largest page of builds."""
DEFAULT_RETRY_AFTER_SECONDS = 5.0
TEMPORARY_CODES = frozenset({"unavailable", "rate_limited", "too_many_builds"})
TEMPORARY_STATUSES = frozenset({429, 502, 503, 504})

_View = TypeVar("_View", BuildView, StepView, BuildSummary, MirrorView, MirrorStatus, ScheduleView)
_Report = TypeVar("_Report", SweepReport, StorageReport)
RETENTION_TIMEOUT_SECONDS = 3600.0
"""Longest wait for a sweep (or a report with its dry run): it answers when done, and its work
grows with what expires, which after a long pause can be a lot."""


class HttpClient:
    """One farm's API at ``url`` (``http://host:port``), as the user behind ``token``."""

    def __init__(self, url: str, token: str | None, *, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.uploads = 0  # source tarballs sent by submit(): the ones the farm did not have
        self._has_token = bool(token)
        headers = {"User-Agent": "buildfarm-cli", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url + API_PREFIX,
            headers=headers,
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"HttpClient({self.url!r})"

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def where(self) -> str:
        return f"at {self.url}"

    # -- transport and errors --------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ServiceUnavailableError(
                f"the farm at {self.url} did not answer in time ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise ServiceUnavailableError(f"cannot reach the farm at {self.url}: {exc}") from exc
        if response.is_error:
            raise self._error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise self._unexpected(f"{method} {path} answered {response.status_code} without JSON") from exc

    def _unexpected(self, what: str) -> BuildfarmError:
        return BuildfarmError(f"unexpected answer from the farm at {self.url}: {what}")

    def _error(self, response: httpx.Response) -> BuildfarmError:
        """The engine's exception for an error answer (see docs/api.md, "Errors")."""
        status = response.status_code
        code, message = f"http_{status}", f"HTTP {status} {response.reason_phrase}".strip()
        try:
            body = response.json()
            detail = body["error"]
            code, message = str(detail["code"]), str(detail["message"])
        except (ValueError, KeyError, TypeError):
            pass
        if code in TEMPORARY_CODES or status in TEMPORARY_STATUSES:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            if code == "unavailable" or status != 429:
                return ServiceUnavailableError(f"the farm at {self.url}: {message}", retry_after)
            return TemporaryError(f"{message} (retry after {retry_after:g} s)", retry_after)
        if code == "unauthenticated" or status == 401:
            if not self._has_token:
                message += " (set BUILDFARM_TOKEN or token: in the client configuration file)"
            return AuthError(f"the farm at {self.url}: {message}")
        kinds: dict[str, type[PermanentError]] = {
            "forbidden": ForbiddenError,
            "not_found": NotFoundError,
            "conflict": ConflictError,
            "bad_manifest": ManifestError,
        }
        if code in kinds:
            return kinds[code](message)
        if status < 500:  # bad_request, bad_source, invalid, too_large, ...
            return PermanentError(message)
        return BuildfarmError(f"the farm at {self.url} failed: {message}")

    # -- builds ----------------------------------------------------------------------------

    def submit(self, manifest_path: Path, user: str | None) -> int:
        manifest = load_manifest(manifest_path)
        if user is not None:
            raise PermanentError(
                f"--user is for the local farm: the farm at {self.url} records the token's user"
            )
        root = manifest_path.parent.resolve()
        for index, package in enumerate(manifest.packages):
            if package.stx is not None:  # its revision counts need the git history, not a tree
                raise PermanentError(
                    f"packages[{index}] ({package.describe()}): a StarlingX directory is built by a "
                    "local farm reading the checkout; the remote CLI does not send git history"
                )
        tarballs: dict[str, bytes] = {}
        labels: dict[str, str] = {}  # digest -> the first tree it carries, for error messages
        uploaded: dict[str, dict[str, str]] = {"sources": {}, "contexts": {}, "files": {}}
        trees: builtins.list[tuple[str, str, int, PackageSource | ImageSource]] = [
            ("sources", "packages", index, package) for index, package in enumerate(manifest.packages)
        ]
        trees += [("contexts", "images", index, image) for index, image in enumerate(manifest.images)]
        for field, kind, index, tree in trees:
            if tree.path is None:
                continue  # a git package or context is fetched by the farm itself
            data = pack_tree((root / tree.path).resolve())
            digest = hashlib.sha256(data).hexdigest()
            tarballs[digest] = data
            labels.setdefault(digest, f"{kind}[{index}] ({tree.path})")
            uploaded[field][str(index)] = digest
        for index, package in enumerate(manifest.packages):
            local = files_to_upload(package, root, f"packages[{index}] ({package.describe()})")
            if not local:
                continue  # nothing beside it, or the farm fetches it itself
            data = pack_files(local)
            digest = hashlib.sha256(data).hexdigest()
            tarballs[digest] = data
            labels.setdefault(digest, f"packages[{index}] ({package.describe()}): its files")
            uploaded["files"][str(index)] = digest
        if tarballs:
            answer = self._json("POST", "/sources/missing", json={"sha256": sorted(tarballs)})
            missing = answer.get("missing") if isinstance(answer, dict) else None
            if not isinstance(missing, builtins.list):
                raise self._unexpected("POST /sources/missing did not answer a list of missing sources")
            for digest in missing:
                if digest in tarballs:
                    self._upload(digest, tarballs[digest], labels[digest])
        body = {"manifest": manifest.model_dump(mode="json"), **uploaded}
        return self._build(self._json("POST", "/builds", json=body)).id

    def _upload(self, digest: str, data: bytes, label: str) -> None:
        """PUT one tarball; a refusal (too large, unsafe) names the tree it carries."""
        try:
            headers = {"Content-Type": "application/octet-stream"}
            self._request("PUT", f"/sources/{digest}", content=data, headers=headers)
        except PermanentError as exc:
            if type(exc) is not PermanentError:  # forbidden, unauthenticated: not about this tree
                raise
            raise PermanentError(f"{label}: {exc}") from exc
        self.uploads += 1

    def show(self, build_id: int) -> BuildView:
        return self._build(self._json("GET", f"/builds/{int(build_id)}"))

    def list(
        self,
        *,
        project: str | None = None,
        branch: str | None = None,
        state: str | None = None,
        kind: str | None = None,
        user: str | None = None,
        limit: int = 50,
    ) -> builtins.list[BuildView]:
        filters = {"project": project, "branch": branch, "state": state, "kind": kind, "user": user}
        params: dict[str, str | int] = {k: v for k, v in filters.items() if v}
        per_page = max(1, min(PER_PAGE, limit))
        found: builtins.list[BuildView] = []
        # At most ceil(limit / per_page) pages: each one either fills per_page or is the last.
        for page in range(1, limit // per_page + 2):
            answer = self._json("GET", "/builds", params=params | {"page": page, "per_page": per_page})
            if not isinstance(answer, dict) or not isinstance(answer.get("items"), builtins.list):
                raise self._unexpected("GET /builds did not answer a page of items")
            found.extend(self._summary(item) for item in answer["items"])
            if len(found) >= limit or len(answer["items"]) < per_page:
                break
            if page * per_page >= int(answer.get("total", 0)):
                break
        return found[:limit]

    def read_log(self, build_id: int, step: str, offset: int) -> tuple[bytes, int, bool]:
        response = self._request(
            "GET", f"/builds/{int(build_id)}/steps/{quote(step, safe='')}/log", params={"offset": offset}
        )
        chunk = response.content
        try:
            next_offset = int(response.headers.get("X-Next-Offset", offset + len(chunk)))
        except ValueError as exc:
            raise self._unexpected("X-Next-Offset is not a number") from exc
        return chunk, next_offset, response.headers.get("X-Step-Live") == "1"

    def cancel(self, build_id: int) -> BuildView:
        return self._build(self._json("POST", f"/builds/{int(build_id)}/cancel"))

    def retry(self, build_id: int) -> BuildView:
        return self._build(self._json("POST", f"/builds/{int(build_id)}/retry"))

    def sources(self, project: str, branch: str, build_id: int | None = None) -> AptSource:
        params = {} if build_id is None else {"build": int(build_id)}
        path = f"/repos/{quote(project, safe='')}/{quote(branch, safe='')}/sources"
        answer = self._json("GET", path, params=params)
        try:
            return AptSource(
                url=str(answer["url"]),
                suite=str(answer["suite"]),
                components=tuple(str(c) for c in answer.get("components") or ()),
                trusted="[trusted=yes]" in str(answer.get("line", "")),
                signed_by=str(answer["signed_by"]) if answer.get("signed_by") else None,
                sources=bool(answer.get("source_line")),
            )
        except (KeyError, TypeError) as exc:
            raise self._unexpected(f"GET {path} lacks {exc}") from exc

    def repo_key(self) -> RepoKeyView:
        answer = self._json("GET", "/repos/key")
        try:
            return RepoKeyView(
                str(answer["fingerprint"]), str(answer["public_key"]), str(answer["signed_by"])
            )
        except (KeyError, TypeError) as exc:
            raise self._unexpected(f"GET /repos/key lacks {exc}") from exc

    def status(self) -> dict[str, Any]:
        answer = self._json("GET", "/status")
        if not isinstance(answer, dict):
            raise self._unexpected("GET /status is not an object")
        return answer

    # -- accounts --------------------------------------------------------------------------

    def add_user(self, name: str, *, admin: bool = False, service: bool = False) -> UserView:
        answer = self._json("POST", "/admin/users", json={"name": name, "admin": admin, "service": service})
        answer = answer if isinstance(answer, dict) else {}
        return UserView(
            str(answer.get("name", name)),
            bool(answer.get("admin", admin)),
            bool(answer.get("service", service)),
        )

    def create_token(self, user: str, name: str = "default", days: int = DEFAULT_TOKEN_DAYS) -> CreatedToken:
        answer = self._json(
            "POST", f"/admin/users/{quote(user, safe='')}/tokens", json={"name": name, "expires_days": days}
        )
        try:
            return CreatedToken(int(answer["id"]), user, str(answer["token"]), str(answer["expires_at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise self._unexpected("the new token's answer lacks id, token or expires_at") from exc

    def revoke_token(self, token_id: int) -> None:
        self._request("DELETE", f"/admin/tokens/{int(token_id)}")

    def add_project(self, name: str) -> None:
        self._request("POST", "/admin/projects", json={"name": name})

    def grant(self, user: str, project: str, role: str) -> None:
        path = f"/admin/projects/{quote(project, safe='')}/grants/{quote(user, safe='')}"
        self._request("PUT", path, json={"role": role})

    # -- mirrors ---------------------------------------------------------------------------

    def mirrors(self) -> builtins.list[MirrorView]:
        answer = self._json("GET", "/mirrors")
        if not isinstance(answer, builtins.list):
            raise self._unexpected("GET /mirrors did not answer a list")
        return [self._make(MirrorView, item) for item in answer]

    def sync_mirror(self, name: str, timeout: float) -> MirrorStatus:
        """The farm answers when the sync is done: this one request may read for ``timeout`` seconds."""
        path = f"/mirrors/{quote(name, safe='')}/sync"
        wait = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_SECONDS)
        return self._make(MirrorStatus, self._json("POST", path, timeout=wait))

    # -- schedules -------------------------------------------------------------------------

    def schedules(self) -> builtins.list[ScheduleView]:
        answer = self._json("GET", "/schedules")
        if not isinstance(answer, builtins.list):
            raise self._unexpected("GET /schedules did not answer a list")
        return [self._make(ScheduleView, item) for item in answer]

    # -- retention -------------------------------------------------------------------------

    def run_retention(self, dry_run: bool, progress: Progress | None = None) -> SweepReport:
        """One request that answers when the sweep is done (no progress to show meanwhile)."""
        wait = httpx.Timeout(RETENTION_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
        params = {"dry_run": "true" if dry_run else "false"}
        answer = self._json("POST", "/retention/run", params=params, timeout=wait)
        return self._report(SweepReport.from_dict, answer)

    def storage_report(self) -> StorageReport:
        wait = httpx.Timeout(RETENTION_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
        return self._report(StorageReport.from_dict, self._json("GET", "/storage", timeout=wait))

    def _report(self, make: Callable[[dict[str, Any]], _Report], answer: Any) -> _Report:
        if not isinstance(answer, dict):
            raise self._unexpected("a report is not an object")
        try:
            return make(answer)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise self._unexpected(f"a malformed report: {exc}") from exc

    # -- JSON to the engine's dataclasses --------------------------------------------------

    def _make(self, cls: type[_View], data: Any, **extra: Any) -> _View:
        if not isinstance(data, dict):
            raise self._unexpected(f"a {cls.__name__} is not an object")
        known = {f.name for f in fields(cls)} - set(extra)
        try:
            return cls(**{k: v for k, v in data.items() if k in known}, **extra)
        except TypeError as exc:
            raise self._unexpected(f"{cls.__name__}: {exc}") from exc

    def _build(self, data: Any) -> BuildView:
        steps = data.get("steps") if isinstance(data, dict) else None
        if not isinstance(steps, builtins.list):
            raise self._unexpected("a build without its list of steps")
        return self._make(BuildView, data, steps=[self._make(StepView, s) for s in steps])

    def _summary(self, data: Any) -> BuildView:
        """A listed build: ``steps`` holds counts by state (a full list is counted here)."""
        if not isinstance(data, dict):
            raise self._unexpected("a listed build is not an object")
        steps = data.get("steps")
        if isinstance(steps, builtins.list):
            counts: dict[str, int] = {}
            for step in steps:
                state = str(step.get("state")) if isinstance(step, dict) else "?"
                counts[state] = counts.get(state, 0) + 1
        elif isinstance(steps, dict):
            counts = {str(k): int(v) for k, v in steps.items()}
        else:
            counts = {}
        fields_only = {k: v for k, v in data.items() if k in BUILD_FIELDS}
        return self._make(BuildSummary, fields_only, steps=[], step_counts=counts)


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds; a date or nothing: the default)."""
    try:
        return max(0.0, float(value)) if value else DEFAULT_RETRY_AFTER_SECONDS
    except ValueError:
        return DEFAULT_RETRY_AFTER_SECONDS
