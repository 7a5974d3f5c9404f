"""Labels and selectors: the recommended set everywhere, selectors made only of stable labels."""

from __future__ import annotations

from typing import Any

RECOMMENDED = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)
STABLE = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}


def test_every_object_has_the_recommended_labels(profile_docs: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = profile_docs
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        missing = [k for k in RECOMMENDED if k not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/part-of"] == "buildfarm"


def test_selectors_use_only_stable_labels_and_match_the_pods(
    profile_docs: tuple[str, list[dict[str, Any]]], helpers: dict[str, Any]
) -> None:
    _, docs = profile_docs
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        selector = doc["spec"]["selector"]["matchLabels"]
        assert set(selector) == STABLE, f"{doc['metadata']['name']}: selector {selector}"
        pod_labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()


def test_services_select_exactly_one_workload(profile_docs: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = profile_docs
    pods = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
    ]
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        assert sum(1 for labels in pods if selector.items() <= labels.items()) == 1, svc["metadata"]["name"]


def test_one_resource_per_template_file_with_a_kind_suffixed_name(
    profile_docs: tuple[str, list[dict[str, Any]]],
) -> None:
    # helm template's "# Source:" comments are dropped by the YAML parser; check the files instead.
    from pathlib import Path

    templates = Path(__file__).resolve().parents[2] / "charts" / "buildfarm" / "templates"
    for path in templates.rglob("*.yaml"):
        kind_suffix = path.stem.rsplit("-", 1)[-1]
        assert kind_suffix in {
            "deployment",
            "statefulset",
            "daemonset",
            "job",
            "cronjob",
            "pod",
            "service",
            "secret",
            "configmap",
            "serviceaccount",
            "role",
            "rolebinding",
            "clusterrole",
            "clusterrolebinding",
            "namespace",
            "networkpolicy",
            "ingress",
            "poddisruptionbudget",
            "persistentvolumeclaim",
            "servicemonitor",
            "podmonitor",
        }, f"{path.name}: name does not end with its kind"


def test_library_helpers_live_under_their_own_prefix() -> None:
    import re
    from pathlib import Path

    charts = Path(__file__).resolve().parents[2] / "charts"
    library = "".join(p.read_text() for p in (charts / "buildfarm-lib" / "templates").glob("*.tpl"))
    defined = re.findall(r'define "([^"]+)"', library)
    assert defined and all(name.startswith("buildfarm-lib.") for name in defined), defined
    umbrella = "".join(p.read_text() for p in (charts / "buildfarm" / "templates").rglob("*.tpl"))
    assert not [n for n in re.findall(r'define "([^"]+)"', umbrella) if n.startswith("buildfarm-lib.")]
