"""API discovery: the groups and resources the double says it knows.

helm asks for them before a ``lookup`` (``helm template --dry-run=server``), for every kind the
farm's chart renders; only Jobs, pods and Secrets are actually served (api.py).
"""

from __future__ import annotations

from .objects import Obj

KINDS: dict[str, list[tuple[str, str, bool]]] = {
    # group/version -> (resource, kind, namespaced): what the farm's chart renders.
    "v1": [
        ("namespaces", "Namespace", False),
        ("pods", "Pod", True),
        ("secrets", "Secret", True),
        ("configmaps", "ConfigMap", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
    ],
    "apps/v1": [
        ("deployments", "Deployment", True),
        ("statefulsets", "StatefulSet", True),
        ("daemonsets", "DaemonSet", True),
    ],
    "batch/v1": [("jobs", "Job", True), ("cronjobs", "CronJob", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True), ("ingresses", "Ingress", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
    "node.k8s.io/v1": [("runtimeclasses", "RuntimeClass", False)],
}


def _resources(group_version: str) -> Obj:
    verbs = ["get", "list", "create", "delete"]
    return {
        "kind": "APIResourceList",
        "groupVersion": group_version,
        "resources": [
            {
                "name": name,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": verbs,
            }
            for name, kind, namespaced in KINDS[group_version]
        ],
    }


def _group(group_version: str) -> Obj:
    version = {"groupVersion": group_version, "version": group_version.split("/")[1]}
    return {"name": group_version.split("/", 1)[0], "versions": [version], "preferredVersion": version}


DISCOVERY: dict[str, Obj] = {
    "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"},
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "/apis": {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(gv) for gv in KINDS if gv != "v1"],
    },
    **{("/api/v1" if gv == "v1" else f"/apis/{gv}"): _resources(gv) for gv in KINDS},
}
"""The discovery documents by path."""
