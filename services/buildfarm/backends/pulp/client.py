"""A bounded pulp-glue client: every request has a timeout, every task wait a deadline.

pulp-glue's contexts call Pulp's own OpenAPI description; :class:`PulpClient` wraps one
:class:`pulp_glue.common.context.PulpContext` with the bounds the farm needs, turns pulp-glue's
errors into one farm error naming what failed (:class:`~buildfarm.model.errors.ServiceUnavailableError`
when Pulp is unreachable, answers 5xx or a task misses its deadline; :class:`PermanentError`
otherwise), and holds the lookups every part of the Pulp backend shares.
"""

from __future__ import annotations

import threading
import time
import typing as t
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from pulp_glue.common.authentication import GlueAuthProvider
from pulp_glue.common.context import (
    EntityDefinition,
    PulpContext,
    PulpEntityContext,
    _patch_api_hook,
)
from pulp_glue.common.exceptions import (
    OpenAPIError,
    PulpAuthenticationFailed,
    PulpException,
    PulpHTTPError,
    PulpNotAutorized,
    PulpNoWait,
)
from pulp_glue.common.openapi import OpenAPI

from buildfarm.backends.pulp.contexts import PulpAptDistributionContext, PulpAptRepositoryContext
from buildfarm.backends.pulp.layout import REPOSITORY_PREFIX
from buildfarm.model.errors import BuildfarmError, PermanentError, ServiceUnavailableError

DEFAULT_TASK_TIMEOUT_SECONDS = 300.0
"""Default bound on one Pulp task; uploads and publications of a build take well under a second each."""
DEFAULT_HTTP_TIMEOUT_SECONDS = 30.0
"""Bound on one HTTP request to Pulp (connect and each read); a healthy Pulp answers in milliseconds."""
UPLOAD_CHUNK_BYTES = 64 * 1024 * 1024
"""Packages larger than this are uploaded in chunks (Pulp's upload API), smaller ones in one request."""
TASK_POLL_FAST_SECONDS = 0.05
TASK_POLL_FAST_FOR_SECONDS = 1.0
TASK_POLL_MAX_SECONDS = 1.0
"""A task is polled every 50 ms for its first second (most take 0.2-0.3 s), then less and less often."""
UNAVAILABLE_RETRY_SECONDS = 30.0
"""How long a caller should wait before trying again after Pulp was unreachable."""


class _BoundedOpenAPI(OpenAPI):
    """pulp-glue's OpenAPI client with a timeout on every request and no API-description cache.

    pulp-glue sends requests without a timeout (a stopped Pulp would hang the caller forever)
    and caches the API description under ~/.cache (read-only in our containers, and stale after
    a Pulp upgrade); the description is fetched once per :class:`PulpClient` instead.
    """

    def __init__(self, http_timeout: float, **kwargs: t.Any) -> None:
        self._http_timeout = http_timeout
        super().__init__(**kwargs)

    def _setup_session(self) -> None:
        super()._setup_session()
        send = self._session.request
        timeout = self._http_timeout

        def bounded(*args: t.Any, **kwargs: t.Any) -> t.Any:
            kwargs.setdefault("timeout", timeout)
            return send(*args, **kwargs)

        self._session.request = bounded  # type: ignore[method-assign,unused-ignore]

    def load_api(self, refresh_cache: bool = False) -> None:
        try:
            data = self._download_api()
        except OSError as exc:  # requests' errors are OSErrors; raise_for_status() escapes pulp-glue
            raise OpenAPIError(str(exc)) from exc
        self._parse_api(data)


class _FarmPulpContext(PulpContext):
    """A PulpContext with bounded HTTP requests and bounded, quickly polled task waits."""

    def __init__(  # noqa: PLR0917
        self, base_url: str, username: str, password: str, task_timeout: float, http_timeout: float, cid: str
    ):
        super().__init__(
            api_root="/pulp/",
            api_kwargs={
                "base_url": base_url,
                "auth_provider": GlueAuthProvider(username=username, password=password),
                "cid": cid,  # Pulp tags the logs and tasks of our requests with it
                "user_agent": "buildfarm (pulp-glue)",
            },
            timeout=max(1, round(task_timeout)),
            verify_ssl=True,
            chunk_size=UPLOAD_CHUNK_BYTES,
        )
        self._http_timeout = http_timeout
        self._api_lock = threading.RLock()  # needs_plugin() reads .api again while we set it up

    @property
    def api(self) -> OpenAPI:
        # Same as PulpContext.api, with _BoundedOpenAPI; the lock makes threads share one client.
        with self._api_lock:
            if self._api is None:
                try:
                    api = _BoundedOpenAPI(
                        self._http_timeout,
                        doc_path=f"{self._api_root}api/v3/docs/api.json",
                        verify_ssl=self.verify_ssl,
                        patch_api_hook=_patch_api_hook,
                        **self._api_kwargs,
                    )
                except OpenAPIError as exc:
                    raise PulpException(str(exc)) from exc
                self._api = api
                for requirement in self._needed_plugins:
                    self.needs_plugin(requirement)
            return self._api

    def wait_for_task(self, task: EntityDefinition, expect_cancel: bool = False) -> t.Any:
        started = time.monotonic()
        deadline = started + self.timeout.total_seconds()
        interval = TASK_POLL_FAST_SECONDS
        while not self._task_finished(task, expect_cancel=expect_cancel):
            now = time.monotonic()
            if now >= deadline:
                raise PulpNoWait(
                    f"task {task['pulp_href']} ({task.get('name', '?')}) did not finish within "
                    f"{self.timeout.total_seconds():.0f}s"
                )
            time.sleep(min(interval, deadline - now))
            if now - started > TASK_POLL_FAST_FOR_SECONDS:
                interval = min(interval * 1.5, TASK_POLL_MAX_SECONDS)
            task = self.api.call("tasks_read", parameters={"task_href": task["pulp_href"]})
        return task


def caused_by_connection(exc: BaseException) -> bool:
    """Whether a pulp-glue error comes from the network (requests' errors are OSErrors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            response = getattr(current, "response", None)
            status = getattr(response, "status_code", None)
            return status is None or status >= 500
        current = current.__cause__ or current.__context__
    return False


class PulpClient:
    """One Pulp server reached through pulp-glue with bounds; safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        task_timeout_seconds: float = DEFAULT_TASK_TIMEOUT_SECONDS,
        http_timeout_seconds: float = DEFAULT_HTTP_TIMEOUT_SECONDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.task_timeout_seconds = task_timeout_seconds
        self.correlation_id = uuid.uuid4().hex
        """Sent with every request: Pulp's logs and tasks (``logging_cid``) name this client."""
        self.ctx = _FarmPulpContext(
            self.base_url, username, password, task_timeout_seconds, http_timeout_seconds, self.correlation_id
        )
        self._repository_hrefs: dict[str, str] = {}
        self._lock = threading.Lock()

    def check(self) -> None:
        """At start: reach Pulp with our credentials and find pulp_deb (raises a farm error)."""
        self.versions()

    def versions(self) -> dict[str, str]:
        """Pulp's component versions, reached with our credentials (raises a farm error)."""
        with self._errors("checking the connection and the credentials"):
            self._first(PulpAptRepositoryContext(self.ctx), name=f"{REPOSITORY_PREFIX}/check")
            return dict(self.ctx.component_versions)

    # -- errors ------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn pulp-glue's errors into one farm error naming ``what`` failed."""
        where = f"Pulp at {self.base_url}"
        try:
            yield
        except BuildfarmError:
            raise
        except PulpNoWait as exc:
            raise ServiceUnavailableError(f"{where}: {what}: {exc}", UNAVAILABLE_RETRY_SECONDS) from exc
        except PulpAuthenticationFailed as exc:
            raise PermanentError(
                f"{where} rejected the credentials of user {self.username!r} ({what})"
            ) from exc
        except PulpNotAutorized as exc:
            raise PermanentError(f"{where} does not allow user {self.username!r} to do this: {what}") from exc
        except PulpHTTPError as exc:
            detail = " ".join(str(exc).split())[:500]
            if exc.status_code >= 500:
                raise ServiceUnavailableError(
                    f"{where}: {what} failed with HTTP {exc.status_code}: {detail}",
                    UNAVAILABLE_RETRY_SECONDS,
                ) from exc
            raise PermanentError(f"{where}: {what} was refused (HTTP {exc.status_code}): {detail}") from exc
        except PulpException as exc:
            detail = " ".join(str(exc).split())[:500]
            if caused_by_connection(exc):
                raise ServiceUnavailableError(
                    f"{where} is unreachable ({what}): {detail}", UNAVAILABLE_RETRY_SECONDS
                ) from exc
            raise PermanentError(f"{where}: {what} failed: {detail}") from exc

    # -- lookups -----------------------------------------------------------------------------

    @staticmethod
    def _first(context: PulpEntityContext, **parameters: t.Any) -> EntityDefinition | None:
        for entity in context.list_iterator(parameters=parameters, batch_size=1):
            return t.cast(EntityDefinition, entity)
        return None

    def _find_or_create(
        self, make: t.Callable[[], PulpEntityContext], body: EntityDefinition, **lookup: t.Any
    ) -> EntityDefinition:
        """The entity matching ``lookup``, created from ``body`` if missing (another writer may win)."""
        found = self._first(make(), **lookup)
        if found is not None:
            return found
        try:
            return t.cast(EntityDefinition, make().create(body=body))
        except PulpException:
            found = self._first(make(), **lookup)  # created concurrently by another node
            if found is None:
                raise
            return found

    def _repository(self, name: str, create: bool = True, remember: bool = True) -> str | None:
        """The href of repository ``name`` (created if missing and ``create``).

        Branch, unpromoted and personal repositories are never deleted by the farm, so their
        hrefs are remembered; staging repositories come and go and are looked up every time.
        """
        with self._lock:
            known = self._repository_hrefs.get(name)
        if known is not None:
            return known
        found: EntityDefinition | None
        if create:
            body = {"name": name, "description": f"buildfarm {name}"}
            found = self._find_or_create(lambda: PulpAptRepositoryContext(self.ctx), body, name=name)
        else:
            found = self._first(PulpAptRepositoryContext(self.ctx), name=name)
        if found is None:
            return None
        href = t.cast(str, found["pulp_href"])
        if remember:
            with self._lock:
                self._repository_hrefs[name] = href
        return href

    def _read(self, repository: str) -> EntityDefinition:
        """The repository's current record (latest version, labels)."""
        return t.cast(EntityDefinition, PulpAptRepositoryContext(self.ctx).show(repository))

    def _distribution(self, base_path: str) -> EntityDefinition | None:
        return self._first(PulpAptDistributionContext(self.ctx), base_path=base_path)

    def _ensure_distribution(self, base_path: str, body: EntityDefinition) -> None:
        self._find_or_create(
            lambda: PulpAptDistributionContext(self.ctx),
            {"name": f"{REPOSITORY_PREFIX}/{base_path}", "base_path": base_path, **body},
            base_path=base_path,
        )
