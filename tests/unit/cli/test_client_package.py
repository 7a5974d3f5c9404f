"""The typed API client stands alone: it imports with the farm, its runtime and the CLI blocked,
and turns answers into wire models and error bodies into errors that say whether to retry."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import httpx
import pytest

import buildfarm_client as api
from buildfarm_client import Client

BLOCKED = ["buildfarm", "buildfarm_cli", "celery", "kombu", "sqlalchemy", "kubernetes", "minio", "redis"]


def test_client_imports_and_works_without_the_farm_installed() -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from importlib.abc import MetaPathFinder

        BLOCKED = {BLOCKED!r}

        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import httpx
        from buildfarm_client import Client

        def answer(request):
            assert request.headers["authorization"] == "Bearer t"
            return httpx.Response(200, json={{"user": "ann", "admin": False, "roles": {{"web": "viewer"}}}})

        with Client("http://farm.invalid", "t", transport=httpx.MockTransport(answer)) as farm:
            print(farm.whoami().model_dump_json())
        print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    whoami, loaded = result.stdout.splitlines()
    assert json.loads(whoami) == {"user": "ann", "admin": False, "roles": {"web": "viewer"}}
    assert loaded == "[]"


def _build(build_id: int) -> dict[str, object]:
    return {
        "id": build_id,
        "project": "web",
        "branch": "main",
        "kind": "nightly",
        "user": "ann",
        "state": "succeeded",
        "created_at": "2026-01-01T00:00:00+00:00",
        "finished_at": None,
        "published": None,
        "error": None,
        "steps": [],
    }


def test_list_builds_reads_pages_until_the_limit() -> None:
    asked: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        asked.append(params)
        page, per_page = int(params["page"]), int(params["per_page"])
        first = (page - 1) * per_page
        items = [_build(300 - i) for i in range(first, min(first + per_page, 300))]
        return httpx.Response(200, json={"items": items, "page": page, "per_page": per_page, "total": 300})

    with Client("http://farm.invalid", transport=httpx.MockTransport(answer)) as farm:
        builds = farm.list_builds(limit=250, project="web", branch=None)
    assert [b.id for b in builds] == list(range(300, 50, -1))
    assert [(p["page"], p["per_page"], p["project"]) for p in asked] == [
        ("1", "200", "web"),
        ("2", "200", "web"),
    ]
    assert all("branch" not in p for p in asked)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "unauthenticated", api.UnauthenticatedError),
        (403, "forbidden", api.ForbiddenError),
        (404, "not_found", api.NotFoundError),
        (409, "conflict", api.ConflictError),
        (400, "bad_manifest", api.BadManifestError),
        (413, "too_large", api.PermanentApiError),
        (429, "rate_limited", api.RateLimitedError),
        (503, "unavailable", api.UnavailableError),
        (500, "internal", api.ServerError),
    ],
)
def test_error_bodies_become_typed_errors(status: int, code: str, kind: type[api.ApiError]) -> None:
    def answer(_request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": code, "message": f"{code} happened"}}
        return httpx.Response(status, json=body, headers={"Retry-After": "7"})

    farm = Client("http://farm.invalid", "secret", transport=httpx.MockTransport(answer))
    with farm, pytest.raises(kind, match=f"{code} happened") as raised:
        farm.build(1)
    assert type(raised.value) is kind and raised.value.code == code and raised.value.status == status
    temporary = isinstance(raised.value, api.TemporaryApiError)
    assert temporary == (status in {429, 503})
    assert not temporary or raised.value.retry_after == 7  # type: ignore[attr-defined]
    assert "secret" not in str(raised.value) and "secret" not in repr(farm)


def test_an_answer_off_the_wire_format_is_a_server_error() -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(200, json={"id": "one"}))
    with Client("http://farm.invalid", transport=transport) as farm, pytest.raises(api.ServerError) as raised:
        farm.build(1)
    assert "unexpected answer from the farm at http://farm.invalid: GET /builds/1" in str(raised.value)
