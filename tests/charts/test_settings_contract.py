"""The settings the chart renders are ones the farm accepts, and its volumes hold what they allow.

Every farm process reads the farm ConfigMap as BUILDFARM_* variables at start and exits on a value
it refuses (issue 13: `builders.resources` with `cpu: 2` passed the schema and stopped every farm
process), so the ConfigMap of each profile is loaded here with the farm's own settings code. The
work directory of each pod must hold the largest upload or outputs those same settings allow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from buildfarm.model.settings import Settings, load_settings

SECRETS_FROM_ENV = {
    "BUILDFARM_S3_ACCESS_KEY": "k",
    "BUILDFARM_S3_SECRET_KEY": "s",
    "BUILDFARM_PULP_PASSWORD": "p",
}


def settings_of(
    docs: list[dict[str, Any]], helpers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    for name in [n for n in os.environ if n.startswith("BUILDFARM_")]:
        monkeypatch.delenv(name)
    config = helpers["find"](docs, "ConfigMap", "farm")["data"]
    for name, value in {**config, **SECRETS_FROM_ENV}.items():
        monkeypatch.setenv(name, value)
    return load_settings(state_dir=tmp_path)


def test_every_profile_renders_settings_the_farm_accepts(
    profile_docs: Any, helpers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, docs = profile_docs
    settings = settings_of(docs, helpers, monkeypatch, tmp_path)
    assert settings.runner == "kubernetes"


def test_integer_cpu_is_accepted_on_both_sides(
    render: Any, helpers: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = render("default", "builders.resources.limits.cpu=2", "builders.resources.requests.cpu=1")
    settings = settings_of(docs, helpers, monkeypatch, tmp_path)
    assert settings.builder_resources["limits"]["cpu"] == "2"
    assert settings.builder_resources["requests"]["cpu"] == "1"
    proc = helpers["helm_template"]("--set", "builders.resources.limits.cpu=two")
    assert proc.returncode != 0 and "/builders/resources/limits/cpu" in proc.stderr


def work_volume_bytes(doc: dict[str, Any], helpers: dict[str, Any]) -> int:
    (state,) = [v for v in helpers["pod_spec"](doc)["volumes"] if v["name"] == "state"]
    if "emptyDir" in state:
        return int(state["emptyDir"]["sizeLimit"])
    return int(state["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"])


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("worker.concurrency=3", "farm.apiMaxUnpackedBytes=10737418240"),
        ("farm.workVolume.storageClassName=fast",),
    ],
)
def test_work_volumes_hold_what_the_settings_allow(
    sets: tuple[str, ...],
    render: Any,
    helpers: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    docs = render("default", *sets)
    settings = settings_of(docs, helpers, monkeypatch, tmp_path)
    api = work_volume_bytes(helpers["find"](docs, "Deployment", "api"), helpers)
    assert api >= settings.api_max_upload_bytes + settings.api_max_unpacked_bytes
    worker = work_volume_bytes(helpers["find"](docs, "DaemonSet", "worker"), helpers)
    assert worker >= settings.node_concurrency * 2 * settings.builder_max_outputs_bytes
    scheduler = work_volume_bytes(helpers["find"](docs, "Deployment", "scheduler"), helpers)
    assert scheduler >= 2 * settings.builder_max_outputs_bytes
