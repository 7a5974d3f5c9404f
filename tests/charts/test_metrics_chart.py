"""The chart's metrics (issue 17): every worker and the scheduler serve /metrics on a named port
that a PodMonitor scrapes, the API's /metrics through a ServiceMonitor (both optional), and the
Grafana dashboard asks only for series the farm really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from buildfarm.metrics import FarmCollector
from buildfarm.metrics.worker import REGISTRY as WORKER_REGISTRY
from buildfarm.state.db import Database, upgrade


def _metrics_port(spec: dict[str, Any]) -> int:
    (container,) = [c for c in spec["containers"] if c["name"] in ("worker", "scheduler")]
    (port,) = [p["containerPort"] for p in container.get("ports", []) if p["name"] == "metrics"]
    return int(port)


def test_workers_serve_metrics_by_default_without_monitors(render: Any, helpers: dict[str, Any]) -> None:
    docs = render("default")
    config = helpers["find"](docs, "ConfigMap", "farm")["data"]
    assert config["BUILDFARM_WORKER_METRICS_PORT"] == "9808"
    assert config["BUILDFARM_WORKER_METRICS_HOST"] == "0.0.0.0"
    for kind, component in (("DaemonSet", "worker"), ("Deployment", "scheduler")):
        assert _metrics_port(helpers["pod_spec"](helpers["find"](docs, kind, component))) == 9808
        policy = helpers["find"](docs, "NetworkPolicy", component)
        assert policy["spec"]["ingress"] == [{"ports": [{"port": 9808, "protocol": "TCP"}]}]
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}
    assert not [d for d in docs if d["metadata"]["name"].endswith("grafana-dashboard")]


def test_monitors_select_the_api_and_the_workers(render: Any, helpers: dict[str, Any]) -> None:
    docs = render(
        "daily-server",
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=kube-prometheus",
        "metrics.workerPort=9900",
    )
    monitor = helpers["find"](docs, "ServiceMonitor", "api")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    service = helpers["find"](docs, "Service", "api")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}

    pods = helpers["find"](docs, "PodMonitor", "worker")
    (expression,) = pods["spec"]["selector"]["matchExpressions"]
    assert set(expression["values"]) == {"worker", "scheduler"}
    assert pods["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    for kind, component in (("DaemonSet", "worker"), ("Deployment", "scheduler")):
        labels = helpers["find"](docs, kind, component)["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] in expression["values"]
        assert pods["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert _metrics_port(helpers["pod_spec"](helpers["find"](docs, kind, component))) == 9900


def test_dashboard_asks_only_for_exported_series(
    render: Any, helpers: dict[str, Any], tmp_path: Path
) -> None:
    docs = render("default", "metrics.grafanaDashboard.enabled=true")
    (configmap,) = [d for d in docs if d["metadata"]["name"].endswith("grafana-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["buildfarm.json"])
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bbuildfarm_[a-z_]+", target["expr"])
    }

    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade(url)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(Database(url), lambda: ["node1"], lambda: {"builds": 0}))
    exported: set[str] = set()
    for family in (f for r in (registry, WORKER_REGISTRY) for f in r.collect()):
        # an empty farm has no samples in some families: their names say what they export
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        exported |= {family.name + suffix for suffix in suffixes}
    assert asked, "the dashboard has no buildfarm series"
    assert asked <= exported, asked - exported


def test_a_typo_in_metrics_values_is_refused(helpers: dict[str, Any]) -> None:
    proc = helpers["helm_template"]("--set", "metrics.serviceMonitor.enable=true")
    assert proc.returncode != 0 and "enable" in proc.stderr
