"""Builder Jobs as plain dicts: a pure function of (step, pod settings, URLs), validated exactly as sent.

Every step is one Job (``backoffLimit: 0``: the engine, not Kubernetes, decides about retries)
whose pod runs a single command:

* ``package``: the package-builder image runs ``buildfarm-step package`` with a presigned GET
  URL of the source tarball (and its sha256), the build's apt sources, and a presigned PUT URL
  for the one outputs archive.  The pod holds no credentials at all;
* ``image`` with ``builder: kaniko``: an init container (the package-builder image's
  ``buildfarm-step fetch-context``) downloads the context through its presigned URL, http or
  https, checks its sha256 and unpacks it safely into the pod's size-limited ``workspace``
  emptyDir; a failure is one line in its termination message, which the runner reports.  The
  kaniko-compatible image then builds ``dir:///workspace/context`` and pushes to
  ``destination``; its only credential is the push-scoped registry Secret, mounted as
  ``config.json``.  ``--digest-file`` writes the pushed digest to the termination message,
  where the runner reads it;
* ``image`` with ``builder: sysbox``: the same Job under ``runtimeClassName`` (sysbox), running
  a docker daemon inside the pod for builds that need one.

Security settings (each pod): no service-account token, ``enableServiceLinks: false``, seccomp
``RuntimeDefault``, ``allowPrivilegeEscalation: false``, every capability dropped except what
apt/dpkg (and kaniko's RUN steps) need as root, no hostPath (only emptyDirs and the registry
Secret), resources always set, ``activeDeadlineSeconds`` and ``ttlSecondsAfterFinished`` on the
Job.  Builders run as root inside the pod: apt installs build dependencies and kaniko unpacks
base images into ``/``, so neither ``runAsNonRoot`` nor a read-only root filesystem fits them.
The kaniko pod's init container needs neither: it runs as root only so that the context's files
stay root's (as in the tarball, and so in the image), with every capability dropped and a
read-only root filesystem; it writes only into the emptyDir and its termination message.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from buildfarm.model.errors import PermanentError
from buildfarm.model.images import registry_host
from buildfarm.model.settinggroups import BuildersSettings
from buildfarm.model.types import ImageBuilder, StepKind
from buildfarm.runners.base import StepJob

Manifest = dict[str, Any]

MANAGED_BY = "buildfarm"
COMPONENT = "builder"
LABEL_PREFIX = "buildfarm.io/"
BUILDER_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component={COMPONENT}"
"""Selects every builder Job and pod this farm creates (the reaper lists by it)."""
CONTAINER = "build"
"""The build container of every builder pod (logs are read from it, after any init container)."""
FETCH_CONTAINER = "fetch-context"
"""The kaniko pod's init container: fetches, checks and unpacks the image context."""
CONTEXT_DIR = "/workspace/context"
"""Where the init container unpacks the image context, in the emptyDir both containers mount."""
MAX_JOB_NAME = 52
"""The Job controller names pods ``<job>-<5 chars>`` and labels them ``job-name=<job>`` (63 max)."""


@dataclass(frozen=True)
class PodSettings:
    """What builder pods are made from: the builders group, the farm's registry, and whether the
    farm mirrors 3rd-party repositories (then the image's own apt sources stay out)."""

    builders: BuildersSettings
    registry_url: str | None = None
    mirrored: bool = False
    package_image: str | None = None
    """The package-builder image of this pod, by digest (the one its step's input key names);
    None: the setting ``builder_image`` as written."""
    cross_arch: str | None = None
    """The Debian architecture this pod cross-builds for (``buildfarm-step package --host-arch``,
    in the cross environment's image, as sbuild's ``--host``); None: the image's own."""

    @property
    def builder_image(self) -> str:
        return self.package_image or self.builders.image

    def pull_secrets(self) -> list[dict[str, str]]:
        """The package-builder image made by ``buildfarm env image`` is on the farm's registry,
        which asks every client for its account (the chart's default): the kubelet pulls it with
        the builders' registry Secret."""
        if not self.registry_url or not self.builders.registry_secret:
            return []
        if not self.builder_image.startswith(registry_host(self.registry_url) + "/"):
            return []
        return [{"name": self.builders.registry_secret}]


ROOT_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETGID", "SETUID"]
"""What a root build needs: dpkg/tar set owners and modes, apt drops to its _apt user.
No NET_RAW, MKNOD, SYS_CHROOT, AUDIT_WRITE, KILL or SETPCAP (the container runtime's other defaults)."""
TERMINATION_LOG = "/dev/termination-log"
"""Each container's termination message (Kubernetes' default path): the pod status carries it back.
kaniko (and the sysbox script) write the pushed digest there, the init container its error."""
DIGEST_FILE = TERMINATION_LOG


@dataclass(frozen=True)
class StepUrls:
    """The presigned URLs one pod gets: its input (source or image context) and, for packages,
    the single upload slot for its outputs archive."""

    source: str
    upload: str = ""


def _slug(text: str, limit: int) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return slug[:limit].strip("-") or "step"


def job_name(build_id: int, step_name: str, attempt: int) -> str:
    """Deterministic and unique per (build, step, attempt): a redelivered message finds the Job
    that exists instead of creating a second one.  The hash keeps truncated names apart."""
    digest = hashlib.sha256(f"{build_id}/{step_name}/{attempt}".encode()).hexdigest()[:8]
    head = f"bf-{build_id}-"
    tail = f"-{attempt}-{digest}"
    return head + _slug(step_name, MAX_JOB_NAME - len(head) - len(tail)) + tail


def label_value(text: str) -> str:
    """A Kubernetes label value (63 chars of ``[A-Za-z0-9._-]``, alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def step_labels(job: StepJob) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "buildfarm-builder",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/part-of": "buildfarm",
        f"{LABEL_PREFIX}build-id": str(job.build_id),
        f"{LABEL_PREFIX}step": label_value(job.step_name),
        f"{LABEL_PREFIX}attempt": str(job.attempt),
        f"{LABEL_PREFIX}kind": job.kind,
        f"{LABEL_PREFIX}project": label_value(job.project),
        f"{LABEL_PREFIX}branch": label_value(job.branch),
    }


def step_annotations(job: StepJob) -> dict[str, str]:
    """The exact names (labels are truncated and sanitised): the reaper reads the step from here."""
    return {
        f"{LABEL_PREFIX}step-name": job.step_name,
        f"{LABEL_PREFIX}project": job.project,
        f"{LABEL_PREFIX}branch": job.branch,
    }


def _resources(pods: PodSettings, override: Mapping[str, Mapping[str, str]] | None) -> dict[str, Any]:
    merged: dict[str, dict[str, str]] = {k: dict(v) for k, v in pods.builders.resources.items()}
    for kind, values in (override or {}).items():
        merged.setdefault(kind, {}).update(values)
    return merged


def _unprivileged_security() -> dict[str, Any]:
    """The init container's: root without any capability, nothing writable but its emptyDir."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsUser": 0,
        "runAsNonRoot": False,
        "seccompProfile": {"type": "RuntimeDefault"},
        "capabilities": {"drop": ["ALL"]},
    }


def _container_security(capabilities: list[str] | None) -> dict[str, Any]:
    security: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": False,  # apt and kaniko write into / (the reason is above)
        "runAsUser": 0,
        "runAsNonRoot": False,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if capabilities is not None:
        security["capabilities"] = {"drop": ["ALL"], "add": capabilities}
    return security


def _pod_spec(
    job: StepJob,
    pods: PodSettings,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    runtime_class: str | None = None,
    *,
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        spec["initContainers"] = init_containers
    if pods.pull_secrets() and any(
        c["image"] == pods.builder_image for c in [container, *(init_containers or [])]
    ):
        spec["imagePullSecrets"] = pods.pull_secrets()
    if pods.builders.service_account:
        spec["serviceAccountName"] = pods.builders.service_account
    node = (job.node or pods.builders.node) if pods.builders.pin_to_node else None
    if node:  # pinned to the worker's own node, as the DaemonSet controller pins its pods
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    selector = node_selector(job.requires)
    if selector:
        spec["nodeSelector"] = selector
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return spec


LABEL_PREFIX = "buildfarm.io/"
"""Kubernetes node labels a step may require, besides the architecture (operators set them:
``kubectl label node n1 buildfarm.io/gpu=true``)."""


def node_selector(requires: str) -> dict[str, str]:
    """A step's required labels as its builder pod's nodeSelector: ``arch=arm64`` (and
    ``native-arch=arm64``) is the well-known ``kubernetes.io/arch``, ``key=value`` is
    ``buildfarm.io/key``, a tag is ``buildfarm.io/tag: "true"``; ``builder=`` labels name what
    the worker runs, not the node."""
    selector: dict[str, str] = {}
    for label in filter(None, requires.split(",")):
        key, _, value = label.partition("=")
        if key == "builder":
            continue
        if key in ("arch", "native-arch"):  # a Kubernetes node's architecture is its own
            selector["kubernetes.io/arch"] = value
        else:
            selector[LABEL_PREFIX + key] = value or "true"
    return selector


def _job(job: StepJob, pods: PodSettings, pod_spec: dict[str, Any]) -> Manifest:
    labels, annotations = step_labels(job), step_annotations(job)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(job.build_id, job.step_name, job.attempt),
            "namespace": pods.builders.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": pods.builders.deadline_seconds,
            "ttlSecondsAfterFinished": pods.builders.ttl_seconds,
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
        },
    }


def _scratch(name: str, path: str, size: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"name": name, "emptyDir": {"sizeLimit": size}}, {"name": name, "mountPath": path}


def package_job(
    job: StepJob,
    pods: PodSettings,
    urls: StepUrls,
    resources: Mapping[str, Mapping[str, str]] | None = None,
) -> Manifest:
    """The Job of a package step: ``buildfarm-step package`` in the package-builder image."""
    if not job.source_sha256 or not urls.upload:
        raise PermanentError(f"step {job.step_name}: a package pod needs the source sha256 and an upload URL")
    args = [
        "package",
        "--source-url",
        urls.source,
        "--source-sha256",
        job.source_sha256,
        "--upload-url",
        urls.upload,
    ]
    for source in job.extra_sources:  # the build's staging repository first, then the mirrors
        args += ["--apt-source", source.line()]
    if pods.mirrored:  # the farm mirrors what builds may use: the image's own sources stay out
        args.append("--only-given-sources")
    if pods.cross_arch:  # as the sbuild runner's --host: Build-Depends and compiler for that one
        args += ["--host-arch", pods.cross_arch]
    if not job.arch_all:  # the Architecture: all binaries are the primary step's
        args.append("--no-arch-all")
    args += [
        "--workdir",
        "/build",
        "--timeout",
        str(int(min(job.timeout_seconds, pods.builders.deadline_seconds))),
    ]
    work_volume, work_mount = _scratch("build", "/build", "20Gi")
    tmp_volume, tmp_mount = _scratch("tmp", "/tmp", "2Gi")
    container = {
        "name": CONTAINER,
        "image": pods.builder_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["buildfarm-step"],
        "args": args,
        "env": [
            {"name": "LC_ALL", "value": "C.UTF-8"},
            {"name": "DEBIAN_FRONTEND", "value": "noninteractive"},
        ],
        "resources": _resources(pods, resources),
        "securityContext": _container_security(ROOT_CAPABILITIES),
        "volumeMounts": [work_mount, tmp_mount],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return _job(job, pods, _pod_spec(job, pods, container, [work_volume, tmp_volume]))


def _build_args(job: StepJob, pods: PodSettings) -> list[tuple[str, str]]:
    assert job.image is not None
    args = list(job.image.build_args)
    names = {name for name, _ in args}
    staging = job.extra_sources[0].line() if job.extra_sources else ""
    prefix = job.image.destination.rsplit("/", 1)[0] if "/" in job.image.destination else ""
    for name, value in (("BUILDFARM_APT_SOURCE", staging), ("BUILDFARM_IMAGE_PREFIX", prefix)):
        if name not in names:
            args.append((name, value))
    return args


def _registry_secret_volume(pods: PodSettings) -> dict[str, Any]:
    return {
        "name": "registry-auth",
        "secret": {
            "secretName": pods.builders.registry_secret,
            "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
            "defaultMode": 0o400,
        },
    }


def _insecure_registry(pods: PodSettings) -> str | None:
    """The registry's host:port when it is plain HTTP (the chart's in-cluster registry)."""
    url = pods.registry_url or ""
    return url.removeprefix("http://").rstrip("/") if url.startswith("http://") else None


def _fetch_context_container(
    job: StepJob, pods: PodSettings, urls: StepUrls, resources: dict[str, Any], mount: dict[str, Any]
) -> dict[str, Any]:
    """``buildfarm-step fetch-context`` in the package-builder image (Python's stdlib only)."""
    assert job.image is not None
    return {
        "name": FETCH_CONTAINER,
        "image": pods.builder_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["buildfarm-step"],
        "args": [
            "fetch-context",
            "--url",
            urls.source,
            "--sha256",
            job.source_sha256,
            "--dest",
            CONTEXT_DIR,
            "--dockerfile",
            job.image.dockerfile,
            "--termination-log",
            TERMINATION_LOG,
        ],
        "env": [{"name": "LC_ALL", "value": "C.UTF-8"}],
        "resources": resources,  # the pod asks for the larger of init and build: no extra room
        "securityContext": _unprivileged_security(),
        "volumeMounts": [mount],
        "terminationMessagePolicy": "File",
    }


def kaniko_job(
    job: StepJob,
    pods: PodSettings,
    urls: StepUrls,
    resources: Mapping[str, Mapping[str, str]] | None = None,
) -> Manifest:
    """An image step on kaniko: the init container fetches and checks the context, kaniko builds
    it from the shared emptyDir and pushes with the Secret only."""
    assert job.image is not None
    if not job.source_sha256:
        raise PermanentError(f"step {job.step_name}: a kaniko pod needs the context's sha256")
    args = [
        f"--context=dir://{CONTEXT_DIR}",
        f"--dockerfile={posixpath.join(CONTEXT_DIR, job.image.dockerfile)}",
        f"--destination={job.image.destination}",
        f"--digest-file={DIGEST_FILE}",
        "--cleanup",
    ]
    args += [f"--build-arg={name}={value}" for name, value in _build_args(job, pods)]
    insecure = _insecure_registry(pods)
    if insecure:
        args += [f"--insecure-registry={insecure}", f"--skip-tls-verify-registry={insecure}"]
    secret_volume = _registry_secret_volume(pods)
    work_volume, work_mount = _scratch("workspace", "/workspace", "20Gi")
    limits = _resources(pods, resources)
    fetch = _fetch_context_container(job, pods, urls, limits, work_mount)
    container = {
        "name": CONTAINER,
        "image": pods.builders.image_builder_image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "env": [{"name": "DOCKER_CONFIG", "value": "/kaniko/.docker"}],
        "resources": limits,
        "securityContext": _container_security(ROOT_CAPABILITIES),
        "volumeMounts": [
            {"name": "registry-auth", "mountPath": "/kaniko/.docker", "readOnly": True},
            work_mount,
        ],
        "terminationMessagePolicy": "File",
    }
    pod = _pod_spec(job, pods, container, [secret_volume, work_volume], init_containers=[fetch])
    return _job(job, pods, pod)


SYSBOX_SCRIPT = "\n".join(
    [
        "set -eu",
        "dockerd >/tmp/dockerd.log 2>&1 &",
        "i=0",
        "until docker version >/dev/null 2>&1; do",
        "  i=$((i+1)); [ $i -lt 60 ] || { cat /tmp/dockerd.log; exit 2; }; sleep 1",
        "done",
        "mkdir -p /workspace/context && cd /workspace",
        'wget -q -O context.tar.gz "$CONTEXT_URL"',
        'echo "$CONTEXT_SHA256  context.tar.gz" | sha256sum -c - || exit 2',
        "tar -xzf context.tar.gz -C context",
        'docker build --progress=plain -f "context/$DOCKERFILE" -t "$DESTINATION" "$@" context',
        'docker push "$DESTINATION"',
        "docker image inspect --format '{{index .RepoDigests 0}}' \"$DESTINATION\" | sed 's/.*@//' > "
        + DIGEST_FILE,
    ]
)
"""The single command of a sysbox pod: start dockerd, fetch and check the context, build, push."""


def sysbox_job(
    job: StepJob,
    pods: PodSettings,
    urls: StepUrls,
    resources: Mapping[str, Mapping[str, str]] | None = None,
) -> Manifest:
    """An image step with a docker daemon inside, isolated by the sysbox runtime class."""
    assert job.image is not None
    if not pods.builders.runtime_class:
        raise PermanentError(
            f"step {job.step_name}: builder sysbox needs setting builder_runtime_class "
            "(sysbox is not enabled)"
        )
    build_args = [f"--build-arg={name}={value}" for name, value in _build_args(job, pods)]
    secret_volume = _registry_secret_volume(pods)
    work_volume, work_mount = _scratch("workspace", "/workspace", "20Gi")
    docker_volume, docker_mount = _scratch("docker", "/var/lib/docker", "40Gi")
    container = {
        "name": CONTAINER,
        "image": pods.builders.sysbox_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", SYSBOX_SCRIPT, "sysbox-build", *build_args],
        "env": [
            {"name": "CONTEXT_URL", "value": urls.source},
            {"name": "CONTEXT_SHA256", "value": job.source_sha256},
            {"name": "DOCKERFILE", "value": job.image.dockerfile},
            {"name": "DESTINATION", "value": job.image.destination},
            {"name": "DOCKER_CONFIG", "value": "/docker-config"},
        ],
        "resources": _resources(pods, resources),
        # dockerd needs its capabilities inside sysbox's user namespace (they are not the host's).
        "securityContext": _container_security(None),
        "volumeMounts": [
            {"name": "registry-auth", "mountPath": "/docker-config", "readOnly": True},
            work_mount,
            docker_mount,
        ],
        "terminationMessagePolicy": "File",
    }
    volumes = [secret_volume, work_volume, docker_volume]
    return _job(job, pods, _pod_spec(job, pods, container, volumes, pods.builders.runtime_class))


def builder_job(
    job: StepJob,
    pods: PodSettings,
    urls: StepUrls,
    resources: Mapping[str, Mapping[str, str]] | None = None,
) -> Manifest:
    """The Job for any step kind."""
    if job.kind == StepKind.PACKAGE:
        return package_job(job, pods, urls, resources)
    if job.kind != StepKind.IMAGE or job.image is None:
        raise PermanentError(f"step {job.step_name}: unknown step kind {job.kind!r}")
    if job.image.builder == ImageBuilder.KANIKO:
        return kaniko_job(job, pods, urls, resources)
    if job.image.builder == ImageBuilder.SYSBOX:
        return sysbox_job(job, pods, urls, resources)
    raise PermanentError(
        f"step {job.step_name}: builder {job.image.builder!r} cannot run on Kubernetes (use kaniko or sysbox)"
    )


def describe(manifest: Manifest) -> str:
    """One line for logs: the pod's commands (init containers first) as a shell would show
    them, presigned URLs shortened."""
    pod = manifest["spec"]["template"]["spec"]
    commands = []
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        words = [*container.get("command", []), *container.get("args", [])]
        commands.append(
            shlex.join(w.split("?", 1)[0] + "?..." if "X-Amz-Signature" in w else w for w in words)
        )
    return " && ".join(commands)
