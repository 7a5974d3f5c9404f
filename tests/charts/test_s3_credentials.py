"""Each service has its own S3 credentials, limited to its bucket; MinIO's root user stays with MinIO
(issue 13)."""

from __future__ import annotations

import json
import re
from typing import Any

SERVICES = {
    "api": "farm",
    "worker": "farm",
    "pulp-api": "pulp",
    "pulp-worker": "pulp",
    "registry": "registry",
}
S3_ENV = re.compile(r"(S3_ACCESS_?KEY|S3_SECRET_?KEY|S3_ACCESSKEY|S3_SECRETKEY)$")


def s3_refs(doc: dict[str, Any], helpers: dict[str, Any]) -> set[str]:
    spec = helpers["pod_spec"](doc)
    return {
        e["valueFrom"]["secretKeyRef"]["name"]
        for c in spec.get("initContainers", []) + spec["containers"]
        for e in c.get("env", [])
        if S3_ENV.search(e["name"]) and "valueFrom" in e
    }


def test_every_service_uses_its_own_minio_user(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("default")
    for doc in helpers["workloads"](docs):
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        refs = s3_refs(doc, helpers)
        if component in ("minio", "minio-buckets"):
            continue
        assert "buildfarm-minio" not in refs, f"{component} holds MinIO's root credentials"
        if component in SERVICES:
            assert refs == {f"buildfarm-s3-{SERVICES[component]}"}, (component, refs)
    job = helpers["find"](docs, "Job", "minio-buckets")
    script = helpers["pod_spec"](job)["containers"][0]["command"][-1]
    for service, bucket in (
        ("farm", "buildfarm-artifacts"),
        ("pulp", "buildfarm-pulp"),
        ("registry", "buildfarm-registry"),
    ):
        policy = json.loads(re.search(rf"printf '%s' '(.+)' > /tmp/{service}-policy.json", script).group(1))  # type: ignore[union-attr]
        assert policy["Statement"][0]["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
        assert f'mc admin user add farm "${service.upper()}_ACCESS_KEY"' in script
        assert f"mc admin policy attach farm buildfarm-{service} --user" in script


def test_an_existing_secret_replaces_the_generated_users(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("default", "s3.existingSecret=my-s3")
    for doc in helpers["workloads"](docs):
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in SERVICES:
            assert s3_refs(doc, helpers) == {"my-s3"}, component
    assert not [
        s for s in helpers["by_kind"](docs, "Secret") if s["metadata"]["name"].startswith("buildfarm-s3-")
    ]
