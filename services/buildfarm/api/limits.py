"""Per-token request rate and per-user running-build cap, enforced in Redis.

Both live in Redis so they hold across any number of API replicas: the rate is a fixed
one-minute window counter per token (INCR + EXPIRE: one round trip, no clock agreement needed
between replicas), and the running-build cap is checked and the build recorded under a
per-user Redis lock, so two submits racing on two replicas cannot both pass a cap of one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from buildfarm.api.errors import RateLimitedError
from buildfarm.model.errors import ServiceUnavailableError

WINDOW_SECONDS = 60
CAP_LOCK_SECONDS = 30
"""A submit holds the user's lock while it records the build (packing is done before): seconds."""


class Limits:
    def __init__(self, client: redis.Redis, rate_per_minute: int, max_running: int) -> None:
        self.client = client
        self.rate_per_minute = rate_per_minute
        self.max_running = max_running

    def hit(self, token_key: str) -> None:
        """Count one request of this token; raise RateLimitedError past the minute's allowance."""
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        key = f"bf:rate:{token_key}:{window}"
        try:
            with self.client.pipeline() as pipe:
                pipe.incr(key)
                pipe.expire(key, WINDOW_SECONDS * 2)
                count = int(pipe.execute()[0])
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"rate limiter (Redis) unreachable: {exc}") from exc
        if count > self.rate_per_minute:
            retry = WINDOW_SECONDS - (now % WINDOW_SECONDS)
            raise RateLimitedError(
                f"more than {self.rate_per_minute} requests this minute with this token", retry_after=retry
            )

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
