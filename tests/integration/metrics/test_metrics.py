"""Prometheus metrics scraped from a real farm (issue 17): the API's /metrics on PostgreSQL and
Redis, each Celery worker's /metrics, and the series moving after real builds and a real
retention sweep sent through Celery."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from buildfarm.dispatch.celery_app import CONTROL_QUEUE, make_celery
from buildfarm.metrics import port_file
from buildfarm.model.settings import load_settings

from apikit import Api, running_api
from debpkgs import make_package, write_manifest
from helpers import wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(tmp_path_factory, postgres_url, redis_url, "metrics_farm", {}, redis_db=7) as started:
        yield started


def test_series_move_after_builds(api: Api, tmp_path: Path) -> None:
    before = scrape(f"{api.url}/metrics")
    assert value(before, "buildfarm_builds", kind="nightly", state="succeeded") == 0
    assert value(before, "buildfarm_node_online", node="node1") == 1
    assert ("buildfarm_broker_queue_messages", (("queue", "builds"),)) in before

    src = tmp_path / "src"
    make_package(src, "met-a", build="sleep 1")
    make_package(src, "met-b", build_depends=("met-a",))
    make_package(src, "met-bad", build="exit 3")
    good = api.farm.json(
        "build", "submit", str(write_manifest(src, ["met-a", "met-b"])), "--wait", "--timeout", "120"
    )
    assert good["state"] == "succeeded", good
    failing = write_manifest(src, ["met-bad"], branch="bad")
    submitted = api.farm.cli("--output", "json", "build", "submit", str(failing), "--wait", check=False)
    bad = json.loads(submitted.stdout)
    assert bad["state"] == "failed", bad
    again = api.farm.json(
        "build", "submit", str(write_manifest(src, ["met-a", "met-b"])), "--wait", "--timeout", "120"
    )
    assert {s["state"] for s in again["steps"]} == {"reused"}

    after = scrape(f"{api.url}/metrics")
    assert value(after, "buildfarm_builds", kind="nightly", state="succeeded") == 2
    assert value(after, "buildfarm_builds", kind="nightly", state="failed") == 1
    assert value(after, "buildfarm_steps", state="reused") == 2
    assert value(after, "buildfarm_steps", state="failed") == 1
    assert value(after, "buildfarm_reuse_ratio") == pytest.approx(2 / 4)
    # two built successes (met-a slept a second), one failure; the reused ones are not timed
    assert value(after, "buildfarm_step_duration_seconds_count", state="succeeded") == 2
    assert value(after, "buildfarm_step_duration_seconds_count", state="failed") == 1
    assert value(after, "buildfarm_step_duration_seconds_sum", state="succeeded") >= 1.0
    assert value(after, "buildfarm_step_duration_seconds_bucket", state="succeeded", le="+Inf") == 2
    assert value(after, "buildfarm_step_setup_seconds_count") == 3
    assert value(after, "buildfarm_storage_bytes", kind="nightly") > 0
    assert value(after, "buildfarm_queue_depth", kind="nightly", project="proj") == 0
    assert value(after, "buildfarm_node_running_steps", node="node1") == 0

    # each node's own /metrics counts the deliveries it handled
    built = 0.0
    for node in ("node1", "node2"):
        port = int(port_file(api.farm.state_dir, node).read_text())
        own = scrape(f"http://127.0.0.1:{port}/metrics")
        built += value(own, "buildfarm_worker_steps_total", outcome="succeeded")
        built += value(own, "buildfarm_worker_steps_total", outcome="failed")
        assert value(own, "buildfarm_worker_steps_active") == 0
    assert built == 3


def test_retention_outcome_with_its_time(api: Api) -> None:
    assert ("buildfarm_task_last_run_timestamp_seconds", (("task", "retention"),)) not in scrape(
        f"{api.url}/metrics"
    )
    settings = load_settings(state_dir=api.farm.state_dir)
    make_celery(settings).send_task("buildfarm.retention_sweep", queue=CONTROL_QUEUE)

    def recorded() -> Samples | None:
        samples = scrape(f"{api.url}/metrics")
        return samples if value(samples, "buildfarm_task_last_run_ok", task="retention") == 1 else None

    samples = wait_for(recorded, 60, "the retention run in /metrics", interval=0.5)
    finished = value(samples, "buildfarm_task_last_run_timestamp_seconds", task="retention")
    assert finished > 0
    assert value(samples, "buildfarm_task_last_success_timestamp_seconds", task="retention") == finished
