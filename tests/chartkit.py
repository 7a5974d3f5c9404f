"""Rendering the buildfarm chart with the pinned helm that `make charts` fetched, and reading
the rendered manifests: shared by the chart tests (tests/charts/conftest.py serves them as fixtures).

Nothing here skips: without `.helm/bin/helm` (or the built library dependency) a render fails
and says to run `make charts`, which fetches helm and builds the dependency.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "buildfarm"
HELM = ROOT / ".helm" / "bin" / "helm"
PROFILES = ("default", "minikube", "daily-server", "multi-node")
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def helm_env() -> dict[str, str]:
    home = ROOT / ".helm"
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def helm_template(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.is_file():
        pytest.fail(f"{HELM} is missing: run `make charts` first (it fetches the pinned helm)")
    if not list((CHART / "charts").glob("buildfarm-lib-*.tgz")):
        pytest.fail("the buildfarm-lib dependency is not built: run `make charts` first")
    return subprocess.run(
        [str(HELM), "template", "buildfarm", str(CHART), "-n", "buildfarm", *args],
        capture_output=True,
        text=True,
        env=helm_env(),
        timeout=60,
        check=False,
    )


def render_profile(profile: str, *sets: str) -> list[Manifest]:
    args = [] if profile == "default" else ["-f", str(ROOT / "values" / f"{profile}.yaml")]
    for item in sets:
        args += ["--set", item]
    proc = helm_template(*args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def pod_spec(doc: Manifest) -> Manifest:
    """The pod spec of any workload kind."""
    kind = doc["kind"]
    if kind == "Pod":
        return doc["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def find(docs: list[Manifest], kind: str, component: str) -> Manifest:
    matches = [
        d
        for d in by_kind(docs, kind)
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(matches) == 1, f"expected one {kind} of component {component}, found {len(matches)}"
    return matches[0]


def workloads(docs: list[Manifest]) -> list[Manifest]:
    return [d for d in docs if d["kind"] in POD_KINDS]
