"""Builder pods run untrusted sources: what they may reach, and what the workers may do to them (issue 13)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

METADATA = ipaddress.ip_address("169.254.169.254")
# an API server or node on the cluster's private network, and a pod of another namespace
PRIVATE = [ipaddress.ip_address(a) for a in ("10.96.0.1", "172.18.0.2", "192.168.49.2", "100.64.0.10")]


def allowed(rule: dict[str, Any], address: ipaddress.IPv4Address) -> bool:
    for peer in rule.get("to", []):
        block = peer.get("ipBlock")
        if block is None:
            continue
        inside = address in ipaddress.ip_network(block["cidr"])
        if inside and not any(address in ipaddress.ip_network(e) for e in block.get("except", [])):
            return True
    return False


def builder_policy(docs: list[dict[str, Any]], helpers: dict[str, Any]) -> dict[str, Any]:
    return helpers["find"](docs, "NetworkPolicy", "builders")  # type: ignore[no-any-return]


def test_builders_egress_is_denied_but_for_what_a_build_needs(
    profile_docs: Any, helpers: dict[str, Any]
) -> None:
    name, docs = profile_docs
    policy = builder_policy(docs, helpers)
    assert policy["metadata"]["namespace"] == "buildfarm-builders"
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in policy["spec"]
    rules = policy["spec"]["egress"]
    for rule in rules:
        # a rule without `to` allows every destination: only DNS may do that
        if "to" not in rule:
            assert {p["port"] for p in rule["ports"]} == {53}
        assert not allowed(rule, METADATA), f"{name}: cloud metadata reachable"
        for address in PRIVATE:
            assert not allowed(rule, address), f"{name}: {address} reachable"
        assert "ports" in rule, "every rule names its ports"
    farm_services = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in rules
        for peer in rule.get("to", [])
        if "podSelector" in peer
    }
    expected = {"pulp-content", "registry"} | ({"minio"} if name != "multi-node" else set())
    assert farm_services == expected


def test_extra_egress_for_a_package_cache(render: Any, helpers: dict[str, Any]) -> None:
    docs = render(
        "default",
        "builders.networkPolicy.extraEgress[0].to[0].ipBlock.cidr=10.1.2.3/32",
        "builders.networkPolicy.extraEgress[0].ports[0].port=3142",
        "builders.networkPolicy.internet.enabled=false",
    )
    rules = builder_policy(docs, helpers)["spec"]["egress"]
    assert rules[-1] == {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"port": 3142}]}
    assert not any(allowed(r, ipaddress.ip_address("151.101.2.132")) for r in rules)  # no internet


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    return {
        (group, resource): sorted(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_worker_role_has_only_the_verbs_the_code_calls(render: Any, helpers: dict[str, Any]) -> None:
    # services/buildfarm/runners/kubeapi.py: Jobs are created, read, listed and deleted; pods are
    # read, listed and deleted (the Job controller creates them); logs are read. Nothing watches.
    role = next(
        r
        for r in helpers["by_kind"](render("default"), "Role")
        if r["metadata"]["name"] == "buildfarm-worker"
    )
    assert rules_of(role) == {
        ("batch", "jobs"): ["create", "delete", "get", "list"],
        ("", "pods"): ["delete", "get", "list"],
        ("", "pods/log"): ["get"],
    }


@pytest.mark.parametrize(
    ("component", "kind"), [("scheduler", "Deployment"), ("builders-cleanup", "CronJob")]
)
def test_scheduler_and_reaper_have_their_own_accounts(
    component: str, kind: str, render: Any, helpers: dict[str, Any]
) -> None:
    docs = render("default")
    spec = helpers["pod_spec"](helpers["find"](docs, kind, component))
    account = spec["serviceAccountName"]
    assert account == f"buildfarm-{component}"
    assert any(sa["metadata"]["name"] == account for sa in helpers["by_kind"](docs, "ServiceAccount"))
    (binding,) = [
        b for b in helpers["by_kind"](docs, "RoleBinding") if any(s["name"] == account for s in b["subjects"])
    ]
    assert binding["metadata"]["namespace"] == "buildfarm-builders"
    role = next(
        r for r in helpers["by_kind"](docs, "Role") if r["metadata"]["name"] == binding["roleRef"]["name"]
    )
    # both only reap: list and delete builder Jobs and pods, never create
    assert rules_of(role) == {("batch", "jobs"): ["delete", "list"], ("", "pods"): ["delete", "list"]}
