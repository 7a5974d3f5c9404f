"""Every control-plane pod meets Pod Security "restricted"; credentials only through Secrets."""

from __future__ import annotations

import re
from typing import Any

import pytest

SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|BASIC_AUTH)", re.IGNORECASE)


def test_every_pod_is_restricted(
    profile_docs: tuple[str, list[dict[str, Any]]], helpers: dict[str, Any]
) -> None:
    _, docs = profile_docs
    for doc in helpers["workloads"](docs):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = helpers["pod_spec"](doc)
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc["runAsUser"] > 0, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert "hostNetwork" not in spec and "hostPID" not in spec, name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            assert sc.get("privileged") is False, name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: a read-only root filesystem needs an emptyDir on /tmp"
            assert "resources" in container and container["resources"]["limits"], name


def test_service_account_tokens_only_where_the_api_is_used(
    profile_docs: tuple[str, list[dict[str, Any]]], helpers: dict[str, Any]
) -> None:
    _, docs = profile_docs
    needs_token = {"worker", "scheduler", "bootstrap", "sysbox-check", "builders-cleanup"}
    for doc in helpers["workloads"](docs):
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        spec = helpers["pod_spec"](doc)
        assert spec["automountServiceAccountToken"] is (component in needs_token), doc["metadata"]["name"]
        assert spec["serviceAccountName"] != "default"


def test_no_credential_in_plain_env_or_configmaps(
    profile_docs: tuple[str, list[dict[str, Any]]], helpers: dict[str, Any]
) -> None:
    _, docs = profile_docs
    for doc in helpers["workloads"](docs):
        for container in helpers["pod_spec"](doc)["containers"]:
            for env in container.get("env", []):
                if SECRETISH.search(env["name"]):
                    assert "valueFrom" in env and "secretKeyRef" in env["valueFrom"], (
                        f"{doc['metadata']['name']}: {env['name']} must come from a Secret"
                    )
                value = env.get("value", "")
                # A URL may name the password only as a $(VAR) reference filled from a Secret.
                assert not re.search(r"://[^/@$]*:[^/@$(]+@", value), f"{env['name']} embeds a credential"
    for cm in helpers["by_kind"](docs, "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert not re.search(r"(password|secret_key|token)\s*[:=]\s*['\"][^'\"]+['\"]", value, re.I), (
                f"ConfigMap {cm['metadata']['name']}:{key} holds a literal credential"
            )


def test_values_files_hold_no_credentials() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in [root / "charts" / "buildfarm" / "values.yaml", *sorted((root / "values").glob("*.yaml"))]:
        for line in path.read_text().splitlines():
            if line.strip().startswith("#"):
                continue
            assert not re.search(r"(password|secretKey|token|accessKey)\s*:\s*\S", line, re.I) or re.search(
                r"(Key|existingSecret)\s*:", line
            ), f"{path.name}: {line.strip()}"


def test_existing_secrets_replace_generated_ones(render: Any, helpers: dict[str, Any]) -> None:
    docs = render(
        "default",
        "postgresql.existingSecret=my-db",
        "redis.existingSecret=my-redis",
        "minio.existingSecret=my-minio",
        "pulp.existingSecret=my-pulp",
        "pulp.keysExistingSecret=my-pulp-keys",
        "registry.auth.existingSecret=my-registry",
        "builders.registryPushSecret.existingSecret=my-push",
        "flower.enabled=true",
        "flower.existingSecret=my-flower",
    )
    secrets = {d["metadata"]["name"] for d in helpers["by_kind"](docs, "Secret")}
    assert secrets == set(), secrets  # every credential can come from an existing Secret
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for d in helpers["workloads"](docs)
        for c in helpers["pod_spec"](d)["containers"]
        for e in c.get("env", [])
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert {"my-db", "my-redis", "my-minio", "my-pulp", "my-pulp-keys", "my-flower"} <= refs
    config = helpers["find"](docs, "ConfigMap", "farm")["data"]
    assert config["BUILDFARM_BUILDER_REGISTRY_SECRET"] == "my-push"


@pytest.mark.parametrize(
    ("secret", "value"),
    [
        ("buildfarm-postgresql", "postgresql.existingSecret"),
        ("buildfarm-minio", "minio.existingSecret"),
        ("buildfarm-pulp", "pulp.keysExistingSecret"),
    ],
)
def test_an_upgrade_never_regenerates_a_data_credential(
    secret: str, value: str, helpers: dict[str, Any]
) -> None:
    # `helm template --is-upgrade` cannot look the stored Secret up, as Argo CD or a client-side
    # dry run cannot: the render must refuse instead of generating a password the data lacks.
    others = {
        "postgresql.existingSecret": "db",
        "minio.existingSecret": "minio",
        "pulp.keysExistingSecret": "pulp-keys",
    }
    sets = [f"{v}={name}" for v, name in others.items() if v != value]
    proc = helpers["helm_template"]("--is-upgrade", *[a for s in sets for a in ("--set", s)])
    assert proc.returncode != 0
    assert "UPGRADE REFUSED" in proc.stderr and secret in proc.stderr and value in proc.stderr, proc.stderr
    every = [a for s in [f"{v}={n}" for v, n in others.items()] for a in ("--set", s)]
    assert helpers["helm_template"]("--is-upgrade", *every).returncode == 0


def test_builder_namespace_level_is_written_with_its_reason(render: Any, helpers: dict[str, Any]) -> None:
    # builder pods no longer need user namespaces (buildfarm-step runs dpkg-buildpackage in the pod
    # itself, no sbuild): baseline in both cases
    for sysbox, level in (("false", "baseline"), ("true", "baseline")):
        ns = helpers["by_kind"](render("default", f"builders.sysbox.enabled={sysbox}"), "Namespace")[0]
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == level
        assert ns["metadata"]["annotations"]["buildfarm.io/pod-security-reason"]
