"""Grouped settings from the flat names people write, and unknown BUILDFARM_* variables refused.

Operators, the chart and the ops scripts write ``BUILDFARM_DATABASE_URL``; code reads
``settings.database.url``.  A misspelt variable used to be dropped silently: every process now
stops at start with one line naming the nearest real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from buildfarm.model.errors import PermanentError
from buildfarm.model.settings import (
    FLAT_NAMES,
    NON_SETTING_VARIABLES,
    check_environment,
    load_settings,
    setting_variables,
)


@pytest.fixture(autouse=True)
def _no_buildfarm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("BUILDFARM_")]:
        monkeypatch.delenv(name)


def test_flat_variables_fill_the_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = {"name": "extras", "url": "https://deb.example/debian", "distribution": "bookworm"}
    for name, value in {
        "BUILDFARM_DATABASE_URL": "postgresql+psycopg://farm@db/farm",
        "BUILDFARM_REDIS_URL": "redis://broker:6379/0",
        "BUILDFARM_NODE_CONCURRENCY": "3",
        "BUILDFARM_BUILDER_RESOURCES": '{"limits": {"cpu": 2}}',
        "BUILDFARM_FETCH_ALLOW_HOSTS": "git.corp.example, 10.0.0.0/8",
        "BUILDFARM_MIRRORS": json.dumps([mirror]),
        "BUILDFARM_REPOSITORY": "pulp",
        "BUILDFARM_SCHEDULES": "[]",
        "BUILDFARM_API_PORT": "0",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(state_dir=tmp_path)
    assert settings.database.url == "postgresql+psycopg://farm@db/farm"
    assert settings.broker.url == "redis://broker:6379/0"
    assert settings.builders.concurrency == 3
    assert settings.builders.resources == {"limits": {"cpu": "2"}}
    assert settings.fetch.allow_hosts == ["git.corp.example", "10.0.0.0/8"]
    assert [m.name for m in settings.mirrors.repositories] == ["extras"]
    assert (settings.repository.kind, settings.schedules.builds, settings.api.port) == ("pulp", [], 0)
    assert settings.storage.kind == "fs"  # untouched groups keep their documented defaults


def test_keywords_and_the_farm_file_use_the_flat_names(tmp_path: Path) -> None:
    (tmp_path / "farm.json").write_text(json.dumps({"repo_port": 9999, "runner": "host", "pid": 1}))
    settings = load_settings(state_dir=tmp_path, api_port=0, mirror_retain_versions=5)
    assert (settings.repository.port, settings.builders.runner) == (9999, "host")
    assert (settings.api.port, settings.mirrors.retain_versions) == (0, 5)
    assert settings.repository.url == "http://127.0.0.1:9999"


def test_every_setting_has_one_flat_name() -> None:
    variables = setting_variables()
    assert len(variables) == len(set(variables)) == len(FLAT_NAMES)
    assert "BUILDFARM_DATABASE_URL" in variables and "BUILDFARM_MIRRORS" in variables
    assert not set(NON_SETTING_VARIABLES) & set(variables)


def test_an_unknown_variable_is_refused_naming_the_nearest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDFARM_DATABSE_URL", "sqlite:///x")
    with pytest.raises(PermanentError) as caught:
        load_settings(state_dir=tmp_path)
    assert str(caught.value) == (
        "unknown setting BUILDFARM_DATABSE_URL in the environment; did you mean BUILDFARM_DATABASE_URL?"
    )
    with pytest.raises(PermanentError, match=r"BUILDFARM_ZZZ in the environment$"):
        check_environment({"BUILDFARM_ZZZ": "1"})  # nothing near: no guess
    with pytest.raises(PermanentError, match=r"service link of a buildfarm-\* Service"):
        check_environment({"BUILDFARM_API_SERVICE_HOST": "10.0.0.7"})
    with pytest.raises(PermanentError, match="enableServiceLinks"):
        check_environment({"BUILDFARM_REDIS_PORT_6379_TCP_ADDR": "10.0.0.8"})


def test_non_settings_and_other_variables_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILDFARM_URL", "http://farm:8781")
    monkeypatch.setenv("BUILDFARM_TOKEN", "bf_x")
    monkeypatch.setenv("BUILDFARMER", "not ours")
    assert load_settings(state_dir=tmp_path).state_dir == tmp_path


def test_a_bad_value_names_the_setting_people_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PermanentError, match=r"^setting node_concurrency: Input should be greater"):
        load_settings(state_dir=tmp_path, node_concurrency=0)
    monkeypatch.setenv("BUILDFARM_MIRRORS", '[{"name": "x", "distribution": "bookworm"}]')
    with pytest.raises(PermanentError, match=r"^setting mirrors\.0\.url: Field required"):
        load_settings(state_dir=tmp_path)
    monkeypatch.setenv("BUILDFARM_MIRRORS", "[{name: x}]")
    with pytest.raises(PermanentError, match=r"^setting mirrors: BUILDFARM_MIRRORS is not valid JSON"):
        load_settings(state_dir=tmp_path)
    monkeypatch.delenv("BUILDFARM_MIRRORS")
    with pytest.raises(PermanentError, match=r"^setting no_such_thing: Extra inputs"):
        load_settings(state_dir=tmp_path, no_such_thing=1)


def test_replace_checks_the_new_values_and_keeps_the_rest(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, api_port=0, s3_access_key="k")
    changed = settings.replace(registry_url="http://registry:5000", builder_runtime_class="sysbox-runc")
    assert (changed.registry.url, changed.builders.runtime_class) == ("http://registry:5000", "sysbox-runc")
    assert changed.api.port == 0
    assert changed.storage.s3_access_key is not None
    assert changed.storage.s3_access_key.get_secret_value() == "k"
    assert settings.registry.url is None  # the original is unchanged
    with pytest.raises(ValidationError):
        settings.replace(node_concurrency=0)


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "buildfarm.api"],
        [sys.executable, "-m", "celery", "-A", "buildfarm.dispatch.worker:app", "worker", "--pool", "solo"],
        [sys.executable, "-m", "buildfarm_cli", "status"],
    ],
    ids=["api", "worker", "cli"],
)
def test_a_process_with_a_misspelt_variable_does_not_start(command: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
    env |= {"BUILDFARM_STATE_DIR": str(tmp_path), "BUILDFARM_LEASE_SECOND": "60"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 2, result.stderr  # rich may wrap the CLI's one long line
    assert "unknown setting BUILDFARM_LEASE_SECOND" in " ".join(lines)
    assert "did you mean BUILDFARM_LEASE_SECONDS?" in " ".join(lines)
