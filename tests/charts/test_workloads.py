"""Workers on build nodes, exactly one scheduler, RBAC no wider than builder pods need."""

from __future__ import annotations

from typing import Any


def test_workers_are_a_daemonset_on_labelled_build_nodes(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("default")
    ds = helpers["find"](docs, "DaemonSet", "worker")
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"buildfarm.io/build-node": "true"}
    assert not [
        d
        for d in helpers["by_kind"](docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    command = ds["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("-Q") + 1] == "builds,node.$(BUILDFARM_NODE)"
    env = {e["name"]: e for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BUILDFARM_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_workers_as_a_deployment_option(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("default", "worker.kind=Deployment", "worker.replicaCount=3")
    deploy = helpers["find"](docs, "Deployment", "worker")
    assert deploy["spec"]["replicas"] == 3
    assert helpers["find"](docs, "PodDisruptionBudget", "worker")
    assert not helpers["by_kind"](docs, "DaemonSet")


def test_exactly_one_scheduler_replaced_with_recreate(profile_docs: Any, helpers: dict[str, Any]) -> None:
    _, docs = profile_docs
    scheduler = helpers["find"](docs, "Deployment", "scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}
    command = scheduler["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "-B" in command and command[command.index("-Q") + 1] == "control"
    beats = [
        d
        for d in helpers["workloads"](docs)
        for c in helpers["pod_spec"](d)["containers"]
        if "-B" in c.get("command", [])
    ]
    assert len(beats) == 1


def test_worker_rbac_is_exactly_what_builders_need(profile_docs: Any, helpers: dict[str, Any]) -> None:
    _, docs = profile_docs
    roles = [
        r
        for r in helpers["by_kind"](docs, "Role")
        if r["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    assert len(roles) == 1
    role = roles[0]
    assert role["metadata"]["namespace"] == "buildfarm-builders"
    rules = {
        (g, r): sorted(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert rules == {
        ("", "pods"): ["delete", "get", "list"],
        ("batch", "jobs"): ["create", "delete", "get", "list"],
        ("", "pods/log"): ["get"],
    }
    binding = helpers["find"](docs, "RoleBinding", "worker")
    assert binding["metadata"]["namespace"] == "buildfarm-builders"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "buildfarm-worker", "namespace": "buildfarm"}
    ]
    # Nothing else grants the workers anything, and no ClusterRole exists unless sysbox is checked.
    bindings = helpers["by_kind"](docs, "RoleBinding") + helpers["by_kind"](docs, "ClusterRoleBinding")
    assert [b for b in bindings if any(s["name"] == "buildfarm-worker" for s in b["subjects"])] == [binding]
    for cluster_role in helpers["by_kind"](docs, "ClusterRole"):
        assert cluster_role["metadata"]["name"] == "buildfarm-sysbox-check"
        assert all(set(rule["verbs"]) <= {"get", "list"} for rule in cluster_role["rules"])


def test_pod_disruption_budgets_only_where_replicas_exceed_one(
    profile_docs: Any, helpers: dict[str, Any]
) -> None:
    _, docs = profile_docs
    pdbs = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]
        for p in helpers["by_kind"](docs, "PodDisruptionBudget")
    }
    multi = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]
        for d in helpers["by_kind"](docs, "Deployment")
        if d["spec"]["replicas"] > 1
    }
    assert pdbs == multi


def test_api_probes_use_the_health_endpoint(render: Any, helpers: dict[str, Any]) -> None:
    container = helpers["find"](render("default"), "Deployment", "api")["spec"]["template"]["spec"][
        "containers"
    ][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/api/v1/health"


def test_helm_test_pods_check_api_pulp_and_s3(render: Any, helpers: dict[str, Any]) -> None:
    tests = [
        d
        for d in helpers["by_kind"](render("default"), "Pod")
        if d["metadata"]["annotations"].get("helm.sh/hook") == "test"
    ]
    assert sorted(d["metadata"]["name"] for d in tests) == [
        "buildfarm-test-api",
        "buildfarm-test-pulp",
        "buildfarm-test-s3",
    ]
