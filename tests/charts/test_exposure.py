"""The API, Pulp's content app and the registry can be reached from outside the cluster (issue 13):
a Service type and an Ingress with TLS each, and apt clients read packages the content app streams."""

from __future__ import annotations

from typing import Any

import pytest

FRONT_DOORS = {"api": "api", "pulp-content": "pulp.content", "registry": "registry"}


@pytest.mark.parametrize(("component", "prefix"), sorted(FRONT_DOORS.items()))
def test_service_type_and_ingress_with_tls(
    component: str, prefix: str, render: Any, helpers: dict[str, Any]
) -> None:
    docs = render(
        "default",
        f"{prefix}.service.type=LoadBalancer",
        f"{prefix}.service.loadBalancerSourceRanges={{10.0.0.0/8}}",
        f"{prefix}.ingress.enabled=true",
        f"{prefix}.ingress.hostname={component}.example.org",
        f"{prefix}.ingress.tlsSecret={component}-tls",
        f"{prefix}.ingress.className=nginx",
    )
    service = helpers["find"](docs, "Service", component)
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    ingress = helpers["find"](docs, "Ingress", component)
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"hosts": [f"{component}.example.org"], "secretName": f"{component}-tls"}
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == f"{component}.example.org"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}


def test_no_ingress_by_default_and_a_hostname_is_required(render: Any, helpers: dict[str, Any]) -> None:
    assert not helpers["by_kind"](render("default"), "Ingress")
    proc = helpers["helm_template"]("--set", "api.ingress.enabled=true")
    assert proc.returncode != 0 and "api ingress.enabled needs ingress.hostname" in proc.stderr


def test_content_origin_follows_the_service_port(render: Any, helpers: dict[str, Any]) -> None:
    config = helpers["find"](render("default", "pulp.content.service.port=80"), "ConfigMap", "farm")["data"]
    assert (
        config["BUILDFARM_PULP_CONTENT_ORIGIN"]
        == "http://buildfarm-pulp-content.buildfarm.svc.cluster.local:80"
    )
