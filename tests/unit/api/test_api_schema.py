"""The API's OpenAPI document is made from the wire models: every JSON answer of every route
names one of :mod:`buildfarm_client.models`, and so does every JSON request body.

The routers are assembled as ``create_app`` does, over a stand-in farm: making the schema calls
no route, so nothing behind them needs to run.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from fastapi import FastAPI
from pydantic import BaseModel

import buildfarm_client.models as wire
from buildfarm.api.accounts import accounts_router
from buildfarm.api.app import API
from buildfarm.api.builds import builds_router
from buildfarm.api.farm import farm_router
from buildfarm.api.logs import logs_router
from buildfarm.api.mirrors import mirrors_router
from buildfarm.api.repos import repos_router
from buildfarm.api.retention import retention_router
from buildfarm.api.schedules import schedules_router
from buildfarm.api.sources import sources_router
from buildfarm.model.settings import load_settings

NOT_JSON = {
    ("GET", f"{API}/builds/{{build_id}}/steps/{{step}}/log"),
    ("DELETE", f"{API}/admin/tokens/{{token_id}}"),
}


def _openapi(tmp_path: Path) -> dict[str, Any]:
    farm = cast(Any, SimpleNamespace(settings=load_settings(state_dir=tmp_path)))
    app = FastAPI()
    for router in (
        farm_router(farm, cast(Any, None)),
        sources_router(farm),
        builds_router(farm, cast(Any, None)),
        logs_router(farm),
        repos_router(farm),
        accounts_router(farm),
        mirrors_router(farm),
        schedules_router(farm),
        retention_router(farm),
    ):
        app.include_router(router, prefix=API)
    return app.openapi()


def test_every_json_answer_and_body_is_a_wire_model(tmp_path: Path) -> None:
    schema = _openapi(tmp_path)
    wire_names = {
        name for name, value in vars(wire).items() if isinstance(value, type) and issubclass(value, BaseModel)
    }
    named: set[str] = set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if (method.upper(), path) in NOT_JSON:
                continue
            ok = next(v for k, v in operation["responses"].items() if k.startswith("2"))
            answer = ok["content"]["application/json"]["schema"]
            ref = answer.get("$ref") or answer.get("items", {}).get("$ref")
            assert ref, f"{method.upper()} {path} answers without a wire model: {answer}"
            named.add(ref.rsplit("/", 1)[1])
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                named.add(body["schema"]["$ref"].rsplit("/", 1)[1])
    assert named <= wire_names, named - wire_names
    assert len(schema["paths"]) >= 20
