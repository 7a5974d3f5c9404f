"""The web dashboard (issue 17), served by the API process under ``/ui`` with the API's auth.

:func:`mount_dashboard` adds the pages, the static files (htmx, vendored: 0BSD licence, see
``static/htmx-LICENSE.txt``; the stylesheet) and the login redirect to an API app.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from buildfarm.engine.context import FarmContext
from buildfarm.web.routes import NodesOnline, dashboard_router
from buildfarm.web.session import SESSION_COOKIE, LoginRequired, RateCounter, login_url

__all__ = ["SESSION_COOKIE", "mount_dashboard"]


def mount_dashboard(app: FastAPI, farm: FarmContext, limits: RateCounter, nodes_online: NodesOnline) -> None:
    app.include_router(dashboard_router(farm, limits, nodes_online))
    app.mount("/ui/static", StaticFiles(directory=Path(__file__).parent / "static"), name="ui-static")

    async def to_login(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        target = login_url(exc.next_path)
        if request.headers.get("hx-request"):  # htmx follows HX-Redirect with a full page load
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    app.add_exception_handler(LoginRequired, to_login)
