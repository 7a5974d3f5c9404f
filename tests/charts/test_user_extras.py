"""What a chart user expects of every component, as bitnami charts have it (issue 13): placement,
extra environment and volumes, pod annotations, and ServiceAccounts to hang cloud IAM on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

# values path -> (kind, component) of its workload
COMPONENTS = {
    "api": ("Deployment", "api"),
    "worker": ("DaemonSet", "worker"),
    "scheduler": ("Deployment", "scheduler"),
    "flower": ("Deployment", "flower"),
    "postgresql": ("StatefulSet", "postgresql"),
    "redis": ("Deployment", "redis"),
    "minio": ("Deployment", "minio"),
    "pulp.api": ("Deployment", "pulp-api"),
    "pulp.content": ("Deployment", "pulp-content"),
    "pulp.worker": ("Deployment", "pulp-worker"),
    "registry": ("Deployment", "registry"),
}
EXTRAS = {
    "nodeSelector": {"disk": "ssd"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
    ],
    "podAnnotations": {"example.org/team": "builds"},
    "extraEnvVars": [{"name": "EXTRA_SETTING", "value": "1"}],
    "extraVolumes": [{"name": "extra", "emptyDir": {}}],
    "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
}


@pytest.fixture(scope="module")
def extras_docs(tmp_path_factory: pytest.TempPathFactory, helpers: dict[str, Any]) -> list[dict[str, Any]]:
    values: dict[str, Any] = {"flower": {"enabled": True}, "registry": {"storage": {"type": "pvc"}}}
    for path in COMPONENTS:
        node = values
        for part in path.split("."):
            node = node.setdefault(part, {})
        node.update({k: v for k, v in EXTRAS.items() if not (path == "worker" and k == "nodeSelector")})
    file = Path(tmp_path_factory.mktemp("values")) / "extras.yaml"
    file.write_text(yaml.safe_dump(values))
    proc = helpers["helm_template"]("-f", str(file))
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.mark.parametrize("path", sorted(COMPONENTS))
def test_every_component_takes_placement_env_and_volumes(
    path: str, extras_docs: list[dict[str, Any]], helpers: dict[str, Any]
) -> None:
    kind, component = COMPONENTS[path]
    doc = helpers["find"](extras_docs, kind, component)
    spec = helpers["pod_spec"](doc)
    for key in ("tolerations", "affinity", "topologySpreadConstraints"):
        assert spec[key] == EXTRAS[key], (component, key)
    if path == "worker":  # build nodes stay chosen by buildNodeSelector
        assert spec["nodeSelector"] == {"buildfarm.io/build-node": "true"}
    else:
        assert spec["nodeSelector"] == EXTRAS["nodeSelector"]
    assert doc["spec"]["template"]["metadata"]["annotations"]["example.org/team"] == "builds"
    assert {"name": "extra", "emptyDir": {}} in spec["volumes"]
    main = spec["containers"][0]
    assert {"name": "EXTRA_SETTING", "value": "1"} in main["env"], component
    assert {"name": "extra", "mountPath": "/extra"} in main["volumeMounts"]


def test_service_accounts_carry_cloud_iam_annotations(render: Any, helpers: dict[str, Any]) -> None:
    docs = render(
        "default", "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/farm"
    )
    accounts = {sa["metadata"]["name"]: sa for sa in helpers["by_kind"](docs, "ServiceAccount")}
    for name in ("buildfarm-control", "buildfarm-worker", "buildfarm-scheduler", "buildfarm-bootstrap"):
        assert accounts[name]["metadata"]["annotations"] == {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/farm"
        }
    assert "annotations" not in accounts["buildfarm-builder"]["metadata"], "builder pods never get cloud IAM"


def test_an_existing_service_account(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("default", "serviceAccount.create=false", "serviceAccount.name=farm-iam")
    assert "buildfarm-control" not in {
        sa["metadata"]["name"] for sa in helpers["by_kind"](docs, "ServiceAccount")
    }
    assert (
        helpers["pod_spec"](helpers["find"](docs, "Deployment", "pulp-api"))["serviceAccountName"]
        == "farm-iam"
    )
    proc = helpers["helm_template"]("--set", "serviceAccount.create=false")
    assert proc.returncode != 0 and "name the existing ServiceAccount" in proc.stderr
