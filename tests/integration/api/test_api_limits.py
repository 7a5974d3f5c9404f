"""The API's bounds against hostile clients (issue 11, findings 6 and 8), on the real app in-process:
an upload bomb of tiny files and an absolute member are refused in one line, a 405 says which
methods the path takes, and requests without a valid token are rate-limited per client address.

The app runs in-process under httpx's ASGI transport (no server, no farm processes) on SQLite
and the session's private Redis: ~2 s for the module.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from buildfarm import accounts
from buildfarm.api.app import create_app
from buildfarm.engine.context import FarmContext

from farmkit import make_test_context

pytestmark = pytest.mark.integration

ANONYMOUS_RATE = 5
MAX_FILES = 50


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[FarmContext]:
    tmp_path = tmp_path_factory.mktemp("api-limits")
    url = redis_url.rsplit("/", 1)[0] + "/7"  # a database of its own: its counters are its own
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    ctx = make_test_context(
        tmp_path,
        f"sqlite:///{tmp_path / 'state.db'}",
        redis_url=url,
        api_anonymous_rate_per_minute=ANONYMOUS_RATE,
        api_max_unpacked_files=MAX_FILES,
    )
    yield ctx
    ctx.db.dispose()


@pytest.fixture(scope="module")
def admin(farm: FarmContext) -> str:
    return accounts.init_admin(farm).token


@pytest.fixture(scope="module")
def app(farm: FarmContext) -> FastAPI:
    return create_app(farm.settings, farm)


class _Client:
    """Requests to the app in-process (httpx's ASGI transport) as seen from ``address``."""

    def __init__(self, app: FastAPI, address: str, token: str | None = None) -> None:
        self.app, self.address = app, address
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=(self.address, 40000))
            async with httpx.AsyncClient(
                transport=transport, base_url="http://api", headers=self.headers
            ) as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(send())

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def delete(self, path: str) -> httpx.Response:
        return self.request("DELETE", path)


def _put(client: _Client, blob: bytes) -> tuple[int, dict[str, str]]:
    response = client.request(
        "PUT",
        f"/api/v1/sources/{hashlib.sha256(blob).hexdigest()}",
        content=blob,
        headers={"Content-Type": "application/octet-stream"},
    )
    return response.status_code, response.json()["error"]


def test_an_upload_of_too_many_tiny_files_is_refused_as_too_large(
    app: FastAPI, farm: FarmContext, admin: str
) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for index in range(MAX_FILES + 1):
            tar.addfile(tarfile.TarInfo(f"f{index}"))
    client = _Client(app, "10.0.0.1", admin)
    status, error = _put(client, gzip.compress(raw.getvalue(), mtime=0))
    assert status == 413 and error == {
        "code": "too_large",
        "message": f"upload: holds more than {MAX_FILES} files and directories",
    }
    assert not list(farm.work_root.glob("check-*"))  # nothing left behind


def test_an_upload_with_an_absolute_member_is_refused(app: FastAPI, farm: FarmContext, admin: str) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("/debian/control")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    client = _Client(app, "10.0.0.1", admin)
    status, error = _put(client, raw.getvalue())
    assert status == 400 and error == {
        "code": "bad_source",
        "message": "upload: member '/debian/control' is absolute or escapes the tree",
    }


def test_method_not_allowed_says_which_are(app: FastAPI, farm: FarmContext, admin: str) -> None:
    client = _Client(app, "10.0.0.2", admin)
    response = client.delete("/api/v1/builds")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    # Every method of the path (GET and POST are two routes: Starlette named the first one only).
    assert response.headers["Allow"] == "GET, POST"
    assert client.request("PATCH", "/api/v1/health").headers["Allow"] == "GET"


def _until_limited(client: _Client, path: str) -> list[httpx.Response]:
    """Requests to ``path`` up to the first 429 (at most two windows' allowance: a one-minute
    window that rolls over mid-burst resets the count once)."""
    responses: list[httpx.Response] = []
    while len(responses) <= 2 * ANONYMOUS_RATE and (not responses or responses[-1].status_code != 429):
        responses.append(client.get(path))
    return responses


def test_anonymous_flood_is_limited_per_address(app: FastAPI, farm: FarmContext, admin: str) -> None:
    anonymous = _Client(app, "10.0.0.3")
    responses = _until_limited(anonymous, "/api/v1/builds")
    assert anonymous.get("/api/v1/health").status_code == 200  # probes are never limited
    statuses = [r.status_code for r in responses]
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}
    assert ANONYMOUS_RATE <= len(statuses) - 1 <= 2 * ANONYMOUS_RATE
    limited = responses[-1]
    assert limited.json()["error"]["code"] == "rate_limited"
    assert "without a valid token from this address" in limited.json()["error"]["message"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # Wrong tokens count as anonymous too; a valid token from the same address is not held up.
    wrong = _Client(app, "10.0.0.4", "bf_not-a-real-token")
    assert _until_limited(wrong, "/api/v1/whoami")[-1].status_code == 429
    valid = _Client(app, "10.0.0.4", admin)
    assert valid.get("/api/v1/whoami").status_code == 200
    other = _Client(app, "10.0.0.5")
    assert other.get("/api/v1/builds").status_code == 401  # another address has its own count
