"""Where settings come from: keywords, then the state directory's farm file, then BUILDFARM_*."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildfarm.model.settings import FARM_FILE, load_settings


def _farm(directory: Path, redis_url: str) -> Path:
    directory.mkdir()
    (directory / FARM_FILE).write_text(json.dumps({"redis_url": redis_url}))
    return directory


def test_an_explicit_state_dir_wins_over_the_environments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = _farm(tmp_path / "demo", "redis://127.0.0.1:1111/0")
    mine = _farm(tmp_path / "mine", "redis://127.0.0.1:2222/0")
    monkeypatch.setenv("BUILDFARM_STATE_DIR", str(demo))  # what `make` exports
    assert load_settings().broker.url == "redis://127.0.0.1:1111/0"
    settings = load_settings(state_dir=mine)
    assert (settings.state_dir, settings.broker.url) == (mine, "redis://127.0.0.1:2222/0")


def test_the_farm_file_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _farm(tmp_path / "state", "redis://127.0.0.1:3333/0")
    monkeypatch.setenv("BUILDFARM_REDIS_URL", "redis://127.0.0.1:4444/0")  # configures the next start
    assert load_settings(state_dir=state).broker.url == "redis://127.0.0.1:3333/0"
