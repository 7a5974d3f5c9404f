"""What builder pods, in their own namespace, are handed must be reachable from there (issue 13).

A bare Service name resolves only inside its own namespace, and presigned URLs are signed for the
host the farm talks to: the S3 endpoint, Pulp's content origin and the registry must be full
service names, and the Secret every image pod mounts must exist in the builder namespace.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlsplit

FQDN = ".buildfarm.svc.cluster.local"


def farm_config(docs: list[dict[str, Any]], helpers: dict[str, Any]) -> dict[str, str]:
    return helpers["find"](docs, "ConfigMap", "farm")["data"]  # type: ignore[no-any-return]


def test_builders_get_full_service_names(render: Any, helpers: dict[str, Any]) -> None:
    config = farm_config(render("default"), helpers)
    for key in ("BUILDFARM_S3_ENDPOINT", "BUILDFARM_PULP_CONTENT_ORIGIN", "BUILDFARM_REGISTRY_URL"):
        host = urlsplit(config[key]).hostname or ""
        assert host.endswith(FQDN), f"{key}={config[key]}: a builder pod cannot resolve {host}"


def test_cluster_domain_is_a_value(render: Any, helpers: dict[str, Any]) -> None:
    config = farm_config(render("default", "clusterDomain=k8s.example.org"), helpers)
    assert (
        urlsplit(config["BUILDFARM_S3_ENDPOINT"]).hostname == "buildfarm-minio.buildfarm.svc.k8s.example.org"
    )
    pulp = helpers["find"](render("default", "clusterDomain=k8s.example.org"), "ConfigMap", "pulp")
    assert "buildfarm-minio.buildfarm.svc.k8s.example.org:9000" in pulp["data"]["settings.py"]


def test_image_pods_get_the_registry_push_secret_they_mount(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("default")
    config = farm_config(docs, helpers)
    name = config["BUILDFARM_BUILDER_REGISTRY_SECRET"]
    secrets = [
        s
        for s in helpers["by_kind"](docs, "Secret")
        if s["metadata"]["name"] == name and s["metadata"]["namespace"] == "buildfarm-builders"
    ]
    assert len(secrets) == 1, f"no Secret {name} in the builder namespace"
    assert secrets[0]["type"] == "kubernetes.io/dockerconfigjson"
    auths = json.loads(base64.b64decode(secrets[0]["data"][".dockerconfigjson"]))["auths"]
    registry = urlsplit(config["BUILDFARM_REGISTRY_URL"]).netloc
    assert list(auths) == [registry]
    user, _, password = base64.b64decode(auths[registry]["auth"]).decode().partition(":")
    assert user == "buildfarm" and len(password) == 32
    # the registry's own account holds the same password (one render: one generated value)
    account = next(
        s for s in helpers["by_kind"](docs, "Secret") if s["metadata"]["name"] == "buildfarm-registry-auth"
    )
    assert base64.b64decode(account["data"]["password"]).decode() == password
