"""Pulp's pods start and stay up as the chart runs them (issue 13).

Each check here is a failure a real install hit: pulpcore-content chdirs into WORKING_DIRECTORY at
start (absent in a fresh volume), the worker probes imported a model pulpcore no longer has, and
the content app redirected apt to presigned URLs of an object store only the cluster reaches.
"""

from __future__ import annotations

import re
from typing import Any

PULP_COMPONENTS = {"pulp-api", "pulp-content", "pulp-worker", "pulp-migrate", "pulp-signing"}


def pulp_settings(docs: list[dict[str, Any]], helpers: dict[str, Any]) -> str:
    return helpers["find"](docs, "ConfigMap", "pulp")["data"]["settings.py"]  # type: ignore[no-any-return]


def setting(settings: str, name: str) -> str:
    match = re.search(rf"^{name} = (.+)$", settings, re.M)
    assert match, f"{name} is not set"
    return match.group(1).strip().strip('"')


def pulp_containers(docs: list[dict[str, Any]], helpers: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for doc in helpers["workloads"](docs):
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] in PULP_COMPONENTS:
            spec = helpers["pod_spec"](doc)
            for container in spec.get("initContainers", []) + spec["containers"]:
                found.append((doc["metadata"]["name"], container))
    return found


def test_every_pulp_pod_has_its_working_directory(profile_docs: Any, helpers: dict[str, Any]) -> None:
    _, docs = profile_docs
    settings = pulp_settings(docs, helpers)
    needed = {setting(settings, "WORKING_DIRECTORY"), setting(settings, "FILE_UPLOAD_TEMP_DIR")}
    containers = pulp_containers(docs, helpers)
    assert {name for name, _ in containers} >= {"buildfarm-pulp-api", "buildfarm-pulp-content"}
    for name, container in containers:
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        # the directory exists only if a volume is mounted exactly there: a parent volume is empty
        assert needed <= mounts, f"{name}/{container['name']}: {needed - mounts} does not exist at start"


def test_pulp_worker_probes_use_a_model_pulpcore_has(render: Any, helpers: dict[str, Any]) -> None:
    worker = helpers["find"](render("default"), "Deployment", "pulp-worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        script = " ".join(container[probe]["exec"]["command"])
        # pulpcore 3.123 (buildtools/images/pulp/requirements.txt) has AppStatus, no Worker model
        assert "import Worker" not in script
        assert "from pulpcore.app.models import AppStatus" in script
        assert "app_type='worker'" in script and "socket.gethostname()" in script


def test_content_app_streams_instead_of_redirecting(profile_docs: Any, helpers: dict[str, Any]) -> None:
    _, docs = profile_docs
    assert setting(pulp_settings(docs, helpers), "REDIRECT_TO_OBJECT_STORAGE") == "False"
