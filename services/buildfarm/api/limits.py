"""Per-token and per-address request rates and the per-user running-build cap, enforced in Redis.

All live in Redis so they hold across any number of API replicas: a rate is a fixed one-minute
window counter (INCR + EXPIRE: one round trip, no clock agreement needed between replicas) per
token, or, for requests without a valid token, per client address (:class:`AnonymousLimit`
counts those that carry no token at all before any route runs; the token check counts a wrong
one).  The running-build cap is checked and the build recorded under a per-user Redis lock, so
two submits racing on two replicas cannot both pass a cap of one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from buildfarm.api.errors import RateLimitedError, error_response
from buildfarm.model.errors import ServiceUnavailableError, TemporaryError

WINDOW_SECONDS = 60
CAP_LOCK_SECONDS = 30
"""A submit holds the user's lock while it checks the cap and records the build (its trees are
read before and packed after, outside the lock): seconds."""


class Limits:
    def __init__(
        self, client: redis.Redis, rate_per_minute: int, max_running: int, anonymous_per_minute: int
    ) -> None:
        self.client = client
        self.rate_per_minute = rate_per_minute
        self.max_running = max_running
        self.anonymous_per_minute = anonymous_per_minute

    def hit(self, token_key: str) -> None:
        """Count one request of this token; raise RateLimitedError past the minute's allowance."""
        self._count(f"bf:rate:{token_key}", self.rate_per_minute, "with this token")

    def hit_anonymous(self, address: str) -> None:
        """Count one request without a valid token from ``address``; RateLimitedError past the
        minute's allowance."""
        self._count(
            f"bf:anon:{address}", self.anonymous_per_minute, "without a valid token from this address"
        )

    def _count(self, prefix: str, allowance: int, what: str) -> None:
        now = time.time()
        key = f"{prefix}:{int(now // WINDOW_SECONDS)}"
        try:
            with self.client.pipeline() as pipe:
                pipe.incr(key)
                pipe.expire(key, WINDOW_SECONDS * 2)
                count = int(pipe.execute()[0])
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"rate limiter (Redis) unreachable: {exc}") from exc
        if count > allowance:
            retry = WINDOW_SECONDS - (now % WINDOW_SECONDS)
            raise RateLimitedError(f"more than {allowance} requests this minute {what}", retry_after=retry)

    @contextmanager
    def running_cap(self, user: str, count_running: Callable[[], int]) -> Iterator[None]:
        """Hold the user's lock while checking the cap and recording a new build."""
        lock = self.client.lock(f"bf:cap:{user}", timeout=CAP_LOCK_SECONDS, blocking_timeout=10)
        try:
            acquired = lock.acquire()
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"build cap (Redis) unreachable: {exc}") from exc
        if not acquired:
            raise RateLimitedError(f"another submit of {user} is being recorded", retry_after=2)
        try:
            running = count_running()
            if running >= self.max_running:
                raise RateLimitedError(
                    f"{user} already has {running} running builds (limit {self.max_running})",
                    retry_after=30,
                    code="too_many_builds",
                )
            yield
        finally:
            with contextlib.suppress(redis.exceptions.LockError):  # expired while recording: harmless
                lock.release()


class AnonymousLimit:
    """ASGI middleware: a request with no ``Authorization`` header counts against its client
    address's allowance before any route runs (429 past it), whatever it asks for, but the
    ``exempt`` paths (the health check that probes call).  A request with the dashboard's
    ``session_cookie`` is counted by the page itself: against its token, or as anonymous when the
    cookie holds no valid token."""

    def __init__(
        self, app: ASGIApp, limits: Limits, exempt: frozenset[str], session_cookie: str | None = None
    ) -> None:
        self.app = app
        self.limits = limits
        self.exempt = exempt
        self.session_cookie = f"{session_cookie}=".encode() if session_cookie else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] not in self.exempt
            and not any(name == b"authorization" for name, _ in scope["headers"])
            and not self._has_session(scope)
        ):
            try:
                await run_in_threadpool(self.limits.hit_anonymous, client_address(scope.get("client")))
            except TemporaryError as exc:
                status, code = (429, exc.code) if isinstance(exc, RateLimitedError) else (503, "unavailable")
                headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
                await error_response(status, code, str(exc), headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _has_session(self, scope: Scope) -> bool:
        cookie = self.session_cookie
        return cookie is not None and any(
            name == b"cookie" and cookie in value for name, value in scope["headers"]
        )


def client_address(client: tuple[str, int] | object | None) -> str:
    """The address rates are counted by (the peer's: behind a proxy, the proxy's)."""
    if isinstance(client, tuple) and client:
        return str(client[0])
    host = getattr(client, "host", None)
    return str(host) if host else "unknown"
