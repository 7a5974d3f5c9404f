"""Builder Job specs: what only settings decide (node pinning, the sysbox image), without a cluster."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import kubernetes_validate

from buildfarm.model.settings import Settings
from buildfarm.runners.base import ImageSpec, StepJob
from buildfarm.runners.kubespecs import StepUrls, builder_job


def _job(tmp_path: Path, **kw: Any) -> StepJob:
    return StepJob(
        build_id=7,
        step_name="hello",
        attempt=1,
        source_tarball=tmp_path / "src.tar.gz",
        workdir=tmp_path,
        extra_sources=[],
        log=lambda _line: None,
        cancel=threading.Event(),
        source_sha256="a" * 64,
        node="worker-node-1",
        project="examples",
        branch="main",
        **kw,
    )


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(state_dir=tmp_path, builder_runtime_class="sysbox-runc", **kw)


URLS = StepUrls(source="https://s3.example/src", upload="https://s3.example/up")


def _pod(body: dict[str, Any]) -> dict[str, Any]:
    for version in ("1.29.0", "1.37.0"):
        kubernetes_validate.validate(body, version, strict=True)
    return body["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_pods_are_pinned_only_when_workers_run_on_their_node(tmp_path: Path) -> None:
    pinned = _pod(builder_job(_job(tmp_path), _settings(tmp_path, builder_pin_to_node=True), URLS))
    terms = pinned["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["worker-node-1"]
    # a Deployment's worker knows its pod name, not a node: no pin then
    free = _pod(builder_job(_job(tmp_path), _settings(tmp_path, builder_pin_to_node=False), URLS))
    assert "affinity" not in free


def test_sysbox_steps_use_the_configured_image_and_runtime_class(tmp_path: Path) -> None:
    image = ImageSpec(name="tool", builder="sysbox", destination="registry:5000/p/b/7/tool:latest")
    settings = _settings(tmp_path, builder_sysbox_image="registry:5000/mirror/docker:27-dind")
    pod = _pod(builder_job(_job(tmp_path, kind="image", image=image), settings, URLS))
    assert pod["runtimeClassName"] == "sysbox-runc"
    assert pod["containers"][0]["image"] == "registry:5000/mirror/docker:27-dind"
