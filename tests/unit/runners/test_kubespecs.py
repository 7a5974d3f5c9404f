"""Builder Job specs without a cluster: what only settings decide (node pinning, the sysbox image)
and the kaniko pod's shape (its context-fetching init container)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from buildfarm.model.errors import PermanentError
from buildfarm.model.settinggroups import BuildersSettings
from buildfarm.runners.base import ImageSpec, StepJob
from buildfarm.runners.kubespecs import PodSettings, StepUrls, builder_job, describe


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


def _settings(tmp_path: Path, **kw: Any) -> PodSettings:
    builders = BuildersSettings.model_validate({"builder_runtime_class": "sysbox-runc", **kw})
    return PodSettings(builders)


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


def test_a_steps_required_labels_become_its_pods_node_selector(tmp_path: Path) -> None:
    job = _job(tmp_path, requires="arch=arm64,builder=sbuild,cpu=large,gpu,native-arch=arm64")
    pod = _pod(builder_job(job, _settings(tmp_path), URLS))
    assert pod["nodeSelector"] == {
        "kubernetes.io/arch": "arm64",
        "buildfarm.io/cpu": "large",
        "buildfarm.io/gpu": "true",
    }
    assert "nodeSelector" not in _pod(builder_job(_job(tmp_path), _settings(tmp_path), URLS))


def test_sysbox_steps_use_the_configured_image_and_runtime_class(tmp_path: Path) -> None:
    image = ImageSpec(name="tool", builder="sysbox", destination="registry:5000/p/b/7/tool:latest")
    settings = _settings(tmp_path, builder_sysbox_image="registry:5000/mirror/docker:27-dind")
    pod = _pod(builder_job(_job(tmp_path, kind="image", image=image), settings, URLS))
    assert pod["runtimeClassName"] == "sysbox-runc"
    assert pod["containers"][0]["image"] == "registry:5000/mirror/docker:27-dind"


def test_kaniko_pods_fetch_the_context_in_an_unprivileged_init_container(tmp_path: Path) -> None:
    image = ImageSpec(
        name="web",
        dockerfile="docker/Dockerfile",
        builder="kaniko",
        destination="registry:5000/p/b/7/web:latest",
    )
    urls = StepUrls(source="http://minio:9000/bucket/sha256/aa/aaa?X-Amz-Signature=secret")
    body = builder_job(_job(tmp_path, kind="image", image=image), _settings(tmp_path), urls)
    pod = _pod(body)
    (fetch,) = pod["initContainers"]
    (kaniko,) = pod["containers"]
    assert fetch["command"] == ["buildfarm-step"]
    assert fetch["args"] == [
        "fetch-context", "--url", urls.source, "--sha256", "a" * 64, "--dest", "/workspace/context",
        "--dockerfile", "docker/Dockerfile", "--termination-log", "/dev/termination-log",
    ]  # fmt: skip
    assert fetch["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert fetch["securityContext"]["readOnlyRootFilesystem"] is True
    assert fetch["volumeMounts"] == [{"name": "workspace", "mountPath": "/workspace"}]
    assert "--context=dir:///workspace/context" in kaniko["args"]
    assert "--dockerfile=/workspace/context/docker/Dockerfile" in kaniko["args"]
    assert not any("X-Amz" in arg for arg in kaniko["args"])  # only the init container sees the URL
    line = describe(body)
    assert line.startswith("buildfarm-step fetch-context --url 'http://minio:9000/bucket/sha256/aa/aaa?...'")
    assert " && --context=dir:///workspace/context " in line and "secret" not in line


def test_kaniko_pods_need_the_context_sha256(tmp_path: Path) -> None:
    image = ImageSpec(name="web", builder="kaniko", destination="registry:5000/p/b/7/web:latest")
    job = _job(tmp_path, kind="image", image=image)
    job.source_sha256 = ""
    with pytest.raises(PermanentError, match="a kaniko pod needs the context's sha256"):
        builder_job(job, _settings(tmp_path), URLS)


def test_the_package_builder_image_on_the_farms_registry_is_pulled_with_the_builders_secret(
    tmp_path: Path,
) -> None:
    """``buildfarm env image`` pushes it there (the chart's default ``builders.packageImage``),
    and the registry asks every client for its account: the kubelet needs the Secret."""
    settings = {
        "builder_image": "buildfarm-registry.farm.svc.cluster.local:5000/buildfarm/package-builder:current",
        "builder_registry_secret": "buildfarm-registry-push",
    }
    pods = PodSettings(
        BuildersSettings.model_validate(settings),
        registry_url="http://buildfarm-registry.farm.svc.cluster.local:5000",
    )
    package = _pod(builder_job(_job(tmp_path), pods, URLS))
    assert package["imagePullSecrets"] == [{"name": "buildfarm-registry-push"}]
    kaniko = _pod(
        builder_job(
            _job(
                tmp_path,
                image=ImageSpec(name="web", builder="kaniko", destination="registry:5000/p/b/7/web:latest"),
                kind="image",
            ),
            pods,
            URLS,
        )
    )
    assert kaniko["imagePullSecrets"] == [{"name": "buildfarm-registry-push"}]  # its fetch-context init
    elsewhere = PodSettings(
        BuildersSettings.model_validate({**settings, "builder_image": "ghcr.io/x/package-builder:1"}),
        registry_url="http://buildfarm-registry.farm.svc.cluster.local:5000",
    )
    assert "imagePullSecrets" not in _pod(builder_job(_job(tmp_path), elsewhere, URLS))
