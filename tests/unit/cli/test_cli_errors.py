"""User mistakes and unreachable services: one line on stderr, a meaningful exit code, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port


def _cli(state: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
    base["BUILDFARM_STATE_DIR"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "buildfarm_cli", *args],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 2, result.stderr  # rich may wrap one long line
    assert message in " ".join(lines), result.stderr


def test_no_farm(tmp_path: Path) -> None:
    _one_line(_cli(tmp_path, "build", "list"), 1, "no local farm in")
    _one_line(_cli(tmp_path, "repo", "sources", "p", "main"), 1, "run `buildfarm start`")


def test_manifest_errors_need_no_farm(tmp_path: Path) -> None:
    _one_line(_cli(tmp_path, "build", "submit", str(tmp_path / "absent.yaml")), 1, "no such manifest file")
    bad = tmp_path / "m.yaml"
    bad.write_text("project: p\nbranch: main\nkind: nightly\npackages: [{path: x}]\nextra: 1\n")
    _one_line(_cli(tmp_path, "build", "submit", str(bad)), 1, f"{bad}: extra: unknown field")


def test_unreachable_database_is_temporary(tmp_path: Path) -> None:
    (tmp_path / "farm.json").write_text(json.dumps({"redis_url": f"redis://127.0.0.1:{free_port()}/0"}))
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    result = _cli(tmp_path, "build", "list", env={"BUILDFARM_DATABASE_URL": url})
    _one_line(result, 3, "database postgresql+psycopg://postgres@127.0.0.1:")
    assert "try again later" in result.stderr


@pytest.mark.parametrize("value", ["abc", "-5"])
def test_bad_setting_is_one_line(tmp_path: Path, value: str) -> None:
    _one_line(_cli(tmp_path, "status", env={"BUILDFARM_LEASE_SECONDS": value}), 1, "setting lease_seconds")


def test_usage_error_exit_2(tmp_path: Path) -> None:
    result = _cli(tmp_path, "build", "show", "not-a-number")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_env_image_needs_a_builder_image_tag_on_the_farms_registry(tmp_path: Path) -> None:
    _one_line(_cli(tmp_path, "env", "image"), 1, "no container registry: set registry_url")
    env = {
        "BUILDFARM_REGISTRY_URL": "http://127.0.0.1:5000",
        "BUILDFARM_BUILDER_IMAGE": "other.example/bf/pb:v1",
    }
    _one_line(
        _cli(tmp_path, "env", "image", env=env), 1, "is not a tag on the farm's registry 127.0.0.1:5000"
    )
