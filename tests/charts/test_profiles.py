"""Each profile renders what it promises; a wrong type or unknown key fails with the schema's message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def components(docs: list[dict[str, Any]], kind: str) -> set[str]:
    return {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in docs if d["kind"] == kind}


def test_default_deploys_every_component(render: Any) -> None:
    docs = render("default")
    assert components(docs, "Deployment") == {
        "api",
        "scheduler",
        "redis",
        "minio",
        "pulp-api",
        "pulp-content",
        "pulp-worker",
        "registry",
    }
    assert components(docs, "StatefulSet") == {"postgresql"}
    assert components(docs, "DaemonSet") == {"worker"}
    assert components(docs, "Job") == {"minio-buckets", "pulp-migrate", "bootstrap"}
    assert "default-deny" in components(docs, "NetworkPolicy")


def test_minikube_is_small_with_minio_one_worker_and_no_sysbox(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("minikube")
    worker = helpers["find"](docs, "Deployment", "worker")
    assert worker["spec"]["replicas"] == 1
    assert worker["spec"]["template"]["spec"].get("nodeSelector", {}) == {}, "minikube needs no node label"
    assert "minio" in components(docs, "Deployment")
    assert "sysbox-check" not in components(docs, "Job")
    config = helpers["find"](docs, "ConfigMap", "farm")["data"]
    assert config["BUILDFARM_BUILDER_RUNTIME_CLASS"] == ""
    api = helpers["find"](docs, "Deployment", "api")["spec"]["template"]["spec"]["containers"][0]
    assert api["resources"]["requests"]["memory"] == "128Mi"


def test_daily_server_persists_and_schedules(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("daily-server")
    claims = components(docs, "PersistentVolumeClaim")
    assert {"redis", "minio"} <= claims
    assert helpers["find"](docs, "StatefulSet", "postgresql")["spec"]["volumeClaimTemplates"]
    config = helpers["find"](docs, "ConfigMap", "farm")["data"]
    assert config["BUILDFARM_NIGHTLY_SCHEDULE"] == "0 1 * * *"
    assert config["BUILDFARM_RETENTION_NIGHTLY_DAYS"] == "14"
    assert config["BUILDFARM_PROJECTS"] == '["starlingx"]'
    # Nightly builds, retention and backups run in the scheduler, not as CronJobs.
    assert components(docs, "CronJob") == {"registry-gc", "builders-cleanup"}  # + the orphan reaper


def test_multi_node_uses_external_services_and_spreads(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("multi-node")
    assert "postgresql" not in components(docs, "StatefulSet")
    assert "minio" not in components(docs, "Deployment")
    config = helpers["find"](docs, "ConfigMap", "farm")["data"]
    assert config["BUILDFARM_DATABASE_URL"].startswith(
        "postgresql+psycopg://buildfarm@postgres.example.internal:5432/"
    )
    assert config["BUILDFARM_S3_ENDPOINT"] == "https://s3.example.internal"
    api = helpers["find"](docs, "Deployment", "api")
    assert api["spec"]["replicas"] == 2
    assert api["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    ds = helpers["find"](docs, "DaemonSet", "worker")
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"buildfarm.io/build-node": "true"}
    assert "sysbox-check" in components(docs, "Job")
    assert {"api", "pulp-api", "pulp-content", "pulp-worker"} <= components(docs, "PodDisruptionBudget")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("api.replicaCount=two", "at '/api/replicaCount': got string, want integer"),
        ("api.replicas=2", "at '/api': additional properties 'replicas' not allowed"),
        ("worker.kind=StatefulSet", "at '/worker/kind'"),
        ("image.tag=latest", "at '/image/tag'"),
        ("minio.enabled=false", "s3.endpoint is required when minio.enabled is false"),
        ("farm.schedules.backup=0 4 * * *", "farm.schedules.backup is set but farm.backup.target is empty"),
        ("farm.backup.target=/backups", "target is a directory but farm.backup.existingClaim is empty"),
    ],
)
def test_bad_values_fail_with_a_clear_message(setting: str, message: str, helpers: dict[str, Any]) -> None:
    proc = helpers["helm_template"]("--set", setting)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_readme_parameter_table_is_generated_from_values() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "charts" / "values-table.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
