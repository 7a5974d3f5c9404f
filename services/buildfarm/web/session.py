"""Logging in to the dashboard: an API token, checked once, kept in a session cookie.

The cookie holds the token itself (HttpOnly, SameSite=Strict, Secure over https, gone when the
browser closes), so every page authenticates exactly as the API does: a revoked or expired
token logs the browser out at its next request.  Requests are counted against the token's rate
like API calls; a bad cookie counts against the client address like an anonymous call.
Forms that change something (login, logout, cancel, retry) also refuse a foreign ``Origin``.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request

from buildfarm import accounts
from buildfarm.accounts import AuthError, ForbiddenError, Principal
from buildfarm.engine.context import FarmContext

SESSION_COOKIE = "buildfarm_session"
FORM_MAX_BYTES = 4096


class RateCounter(Protocol):
    """The API's rate limits (``buildfarm.api.limits.Limits``): pages count like API calls."""

    def hit(self, token_key: str) -> None: ...

    def hit_anonymous(self, address: str) -> None: ...


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def login_url(next_path: str) -> str:
    return "/ui/login?next=" + quote(next_path, safe="/")


def principal_of(request: Request, farm: FarmContext, limits: RateCounter) -> Principal:
    token = request.cookies.get(SESSION_COOKIE)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if not token:
        raise LoginRequired(here)
    try:
        principal = accounts.authenticate(farm, token)
    except AuthError:
        limits.hit_anonymous(request.client.host if request.client else "unknown")
        raise LoginRequired(here) from None
    limits.hit(accounts.digest(token)[:24])
    return principal


def check_origin(request: Request) -> None:
    """A form posted from another site (a browser always sends Origin on POST) is refused."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise ForbiddenError("this form was sent from another site")


async def form_fields(request: Request) -> dict[str, str]:
    """The fields of a small urlencoded form (the dashboard's forms hold a token at most)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX_BYTES:
            raise ForbiddenError("form too large")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items() if v}


def safe_next(value: str | None) -> str:
    """Only a path of this dashboard: never an open redirect to another site."""
    if value and value.startswith("/ui/") and not value.startswith("//"):
        return value
    return "/ui/builds"
