"""The API's wire models are the farm's own answers: the engine, the feature packages and the
repository backends' mirror sync return them (one definition from the database to the client),
and the closed sets the client spells as strings are the server's enums."""

from __future__ import annotations

import typing

import pytest

from buildfarm.state.models import Role
from buildfarm_client import models


def test_closed_sets_match_the_server() -> None:
    assert set(typing.get_args(models.RoleName)) == {r.value for r in Role}


def test_answers_ignore_fields_a_newer_server_adds_and_requests_refuse_unknown_ones() -> None:
    assert models.HealthOut.model_validate({"status": "ok", "new": 1}).status == "ok"
    with pytest.raises(ValueError, match="extra"):
        models.ProjectIn.model_validate({"name": "web", "typo": True})
