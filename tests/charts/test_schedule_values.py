"""farm.schedules.builds reaches every farm process as BUILDFARM_SCHEDULES, in the settings' own shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from buildfarm.model.settings import load_settings

BUILDS = [
    {
        "name": "main-nightly",
        "cron": "0 2 * * *",
        "project": "starlingx",
        "branch": "r/stx.9.0",
        "user": "nightly",
        "git": "https://git.example.org/stx.git",
        "ref": "main",
        "manifest": "ci/buildfarm.yaml",
    },
    {"name": "stored", "project": "starlingx", "branch": "main", "user": "nightly", "manifest": "stx.yaml"},
]


def _sets(builds: list[dict[str, str]]) -> list[str]:
    return [
        f"farm.schedules.builds[{i}].{key}={value}" for i, b in enumerate(builds) for key, value in b.items()
    ]


def test_schedules_reach_the_settings(
    render: Any, helpers: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(
        "default", "farm.schedules.nightly=30 1 * * *", "farm.schedules.startAttempts=3", *_sets(BUILDS)
    )
    config = helpers["find"](docs, "ConfigMap", "farm")["data"]
    assert json.loads(config["BUILDFARM_SCHEDULES"]) == BUILDS
    for name in (
        "SCHEDULES",
        "NIGHTLY_SCHEDULE",
        "SCHEDULE_START_TIMEOUT_SECONDS",
        "SCHEDULE_START_ATTEMPTS",
        "SCHEDULE_RETRY_SECONDS",
    ):
        monkeypatch.setenv(f"BUILDFARM_{name}", config[f"BUILDFARM_{name}"])
    settings = load_settings(state_dir=tmp_path)
    retries = (
        settings.schedules.start_timeout_seconds,
        settings.schedules.start_attempts,
        settings.schedules.retry_seconds,
    )
    assert retries == (600, 3, 60)
    assert [(s.name, s.cron or settings.schedules.nightly) for s in settings.schedules.builds] == [
        ("main-nightly", "0 2 * * *"),
        ("stored", "30 1 * * *"),
    ]
    assert (
        json.loads(helpers["find"](render("default"), "ConfigMap", "farm")["data"]["BUILDFARM_SCHEDULES"])
        == []
    )


@pytest.mark.parametrize(
    "builds",
    [
        [{"name": "n", "project": "p", "branch": "b", "user": "u", "crom": "0 2 * * *"}],  # a typo
        [{"name": "n", "project": "p", "branch": "b"}],  # no user
        [{"name": "n", "project": "p", "branch": "b", "user": "u", "kind": "personal"}],
    ],
)
def test_schedule_mistakes_are_refused(render: Any, builds: list[dict[str, str]]) -> None:
    with pytest.raises(AssertionError, match="values don't meet the specifications of the schema"):
        render("default", *_sets(builds))


def test_env_refresh_schedule_reaches_the_scheduler(
    render: Any, helpers: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """farm.schedules.envRefresh: the nightly run that remakes the package-builder image where a
    node can, and says it is stale where it cannot (the chart's worker pods)."""
    assert (
        helpers["find"](render("default"), "ConfigMap", "farm")["data"]["BUILDFARM_ENV_REFRESH_SCHEDULE"]
        == ""
    )
    config = helpers["find"](render("default", "farm.schedules.envRefresh=15 2 * * *"), "ConfigMap", "farm")
    monkeypatch.setenv("BUILDFARM_ENV_REFRESH_SCHEDULE", config["data"]["BUILDFARM_ENV_REFRESH_SCHEDULE"])
    assert load_settings(state_dir=tmp_path).buildenv.refresh_schedule == "15 2 * * *"
