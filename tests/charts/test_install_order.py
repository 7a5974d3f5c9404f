"""The release becomes ready by itself, with `helm install --wait`, Argo CD or Flux (issue 13).

Buckets, Pulp's migrations and the farm's migrations used to be post-install hooks while the API
needed all three to start: `--wait` waited for pods that waited for hooks that ran only after the
wait. They are ordinary Jobs now, named after what they run, and every pod that needs them waits
in an init container; on upgrade a new pod starts only once its schema is in place.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
WAIT_READY = ROOT / "charts" / "buildfarm" / "files" / "wait_ready.py"
# Hooks that nothing waits on: helm test pods, the sysbox check, registering the signing service.
HOOKS_ALLOWED = {"test", "sysbox-check", "pulp-signing"}


def component(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]  # type: ignore[no-any-return]


def test_nothing_the_release_needs_to_start_is_a_hook(profile_docs: Any) -> None:
    _, docs = profile_docs
    hooks = {component(d) for d in docs if "helm.sh/hook" in d["metadata"].get("annotations", {})}
    assert hooks <= HOOKS_ALLOWED, hooks - HOOKS_ALLOWED
    jobs = {component(d) for d in docs if d["kind"] == "Job" and component(d) not in HOOKS_ALLOWED}
    assert {"pulp-migrate", "bootstrap"} <= jobs


def test_farm_and_pulp_pods_wait_for_their_schema(profile_docs: Any, helpers: dict[str, Any]) -> None:
    _, docs = profile_docs
    waits = {
        component(d): [c["name"] for c in helpers["pod_spec"](d).get("initContainers", [])]
        for d in helpers["workloads"](docs)
    }
    for farm in ("api", "worker", "scheduler"):
        assert waits[farm] == ["wait-ready"], farm
    for pulp in ("pulp-api", "pulp-content", "pulp-worker"):
        assert waits[pulp] == ["wait-migrations"], pulp
    pulp_api = helpers["find"](docs, "Deployment", "pulp-api")
    script = helpers["pod_spec"](pulp_api)["initContainers"][0]["command"][-1]
    assert "pulpcore-manager migrate --check" in script


def job_names(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {component(d): d["metadata"]["name"] for d in docs if d["kind"] == "Job"}


def test_a_job_is_new_when_what_it_runs_changes(render: Any) -> None:
    before = job_names(render("default"))
    assert job_names(render("default")) == before, "an unchanged release must keep its Jobs"
    farm = job_names(render("default", "image.tag=9.9.9"))
    assert farm["bootstrap"] != before["bootstrap"] and farm["pulp-migrate"] == before["pulp-migrate"]
    pulp = job_names(render("default", "pulp.image.tag=9.9.9"))
    assert pulp["pulp-migrate"] != before["pulp-migrate"] and pulp["bootstrap"] == before["bootstrap"]


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BUILDFARM_STATE_DIR", str(tmp_path))
    for name in ("BUILDFARM_DATABASE_URL", "BUILDFARM_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run_wait_ready(limit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WAIT_READY.read_text(), limit],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_wait_ready_waits_for_the_schema_then_passes(state_dir: Path) -> None:
    from buildfarm.state.db import upgrade

    proc = run_wait_ready("0")
    assert proc.returncode == 1
    assert "gave up after 0 s: schema at revision None, this image needs" in proc.stderr, proc.stderr
    upgrade(f"sqlite:///{state_dir / 'buildfarm.db'}")
    proc = run_wait_ready("0")
    assert proc.returncode == 0, proc.stderr
    assert "wait-ready: schema at" in proc.stdout
