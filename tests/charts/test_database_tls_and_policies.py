"""An external database verified by its CA, and Flower reachable under the default-deny policy (issue 13)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any


def test_verify_full_mounts_the_ca_where_libpq_reads_it(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("multi-node")
    connecting = 0
    for doc in helpers["workloads"](docs):
        spec = helpers["pod_spec"](doc)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
            if not ({"PGPASSWORD", "PULP_DB_PASSWORD"} & env.keys()) or "database-ca" not in mounts:
                continue
            connecting += 1
            path = PurePosixPath(env["PGSSLROOTCERT"]["value"])
            assert str(path.parent) == mounts["database-ca"]["mountPath"]
            assert volumes["database-ca"]["secret"]["secretName"] == "buildfarm-db-ca"
            assert volumes["database-ca"]["secret"]["items"] == [{"key": "ca.crt", "path": path.name}]
    # the API, workers, scheduler, bootstrap, reaper and every Pulp pod, with their init containers
    assert connecting >= 10
    for name in ("api", "scheduler", "pulp-api", "pulp-worker", "pulp-content"):
        kind = "Deployment"
        spec = helpers["pod_spec"](helpers["find"](docs, kind, name))
        assert any(m["name"] == "database-ca" for m in spec["containers"][0]["volumeMounts"]), name


def test_verify_full_without_a_ca_is_refused(helpers: dict[str, Any]) -> None:
    proc = helpers["helm_template"](
        "--set",
        "postgresql.enabled=false",
        "--set",
        "externalDatabase.host=db",
        "--set",
        "externalDatabase.existingSecret=db",
        "--set",
        "externalDatabase.sslMode=verify-full",
    )
    assert proc.returncode != 0 and "set externalDatabase.caSecret" in proc.stderr, proc.stderr


def test_flower_is_reachable_under_the_default_deny_policy(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("default", "flower.enabled=true")
    assert helpers["find"](docs, "NetworkPolicy", "default-deny")
    policy = helpers["find"](docs, "NetworkPolicy", "flower")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "flower"
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 5555, "protocol": "TCP"}]
