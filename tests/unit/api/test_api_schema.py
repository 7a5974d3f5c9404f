"""The API's OpenAPI document is made from the wire models: every JSON answer of every route
names one of :mod:`buildfarm_client.models`, and so does every JSON request body.

The routes are assembled as ``create_app`` does (:func:`buildfarm.api.app.assemble`), over a
stand-in farm: making the schema calls no route, so nothing behind them needs to run.  The local
farm's in-process application (the same routes and its own submit) is held to the same rule.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydantic import BaseModel

import buildfarm_client.models as wire
from buildfarm.api.app import API, assemble
from buildfarm.local.inprocess import LocalFarm
from buildfarm.model.settings import load_settings

NOT_JSON = {
    ("GET", f"{API}/builds/{{build_id}}/steps/{{step}}/log"),
    ("DELETE", f"{API}/admin/tokens/{{token_id}}"),
}


def _openapi(tmp_path: Path, local: bool) -> dict[str, Any]:
    settings = load_settings(state_dir=tmp_path)
    if local:
        return LocalFarm(settings).app().openapi()
    farm = cast(Any, SimpleNamespace(settings=settings))
    return assemble(farm, None, cast(Any, None)).openapi()


@pytest.mark.parametrize("local", [False, True], ids=["api", "local-inprocess"])
def test_every_json_answer_and_body_is_a_wire_model(tmp_path: Path, local: bool) -> None:
    schema = _openapi(tmp_path, local)
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
