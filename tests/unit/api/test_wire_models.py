"""The API's wire models say what the engine says: every field of each engine view is on the
wire, and the closed sets the client spells as strings are the server's enums."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from pydantic import BaseModel

from buildfarm.accounts import DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS, CreatedToken
from buildfarm.backends.base import MirrorStatus
from buildfarm.engine.control import BuildView, StepView
from buildfarm.mirrors import MirrorView
from buildfarm.retention import StorageGroup, StorageReport, SweepReport
from buildfarm.schedules import ScheduleView
from buildfarm.state.models import Role
from buildfarm_client import models


@pytest.mark.parametrize(
    ("view", "wire"),
    [
        (BuildView, models.BuildView),
        (StepView, models.StepView),
        (MirrorView, models.MirrorOut),
        (MirrorStatus, models.MirrorSyncOut),
        (ScheduleView, models.ScheduleOut),
        (SweepReport, models.SweepReportOut),
        (StorageGroup, models.StorageGroupOut),
        (StorageReport, models.StorageReportOut),
        (CreatedToken, models.TokenOut),
    ],
)
def test_wire_model_carries_every_field_of_the_engine_view(view: type, wire: type[BaseModel]) -> None:
    assert [f.name for f in dataclasses.fields(view)] == list(wire.model_fields)


def test_closed_sets_and_limits_match_the_server() -> None:
    assert set(typing.get_args(models.RoleName)) == {r.value for r in Role}
    assert (models.DEFAULT_TOKEN_DAYS, models.MAX_TOKEN_DAYS) == (DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS)


def test_answers_ignore_fields_a_newer_server_adds_and_requests_refuse_unknown_ones() -> None:
    assert models.HealthOut.model_validate({"status": "ok", "new": 1}).status == "ok"
    with pytest.raises(ValueError, match="extra"):
        models.ProjectIn.model_validate({"name": "web", "typo": True})
