"""The ``kubernetes`` runner: every step is one builder Job whose pod runs a single command.

The worker creates the Job (:mod:`buildfarm.runners.kubespecs`), streams the pod's log into the
step log while it runs, and collects the result: a package pod uploads one archive through a
presigned PUT URL, which is checked (:func:`buildfarm.runners.outputs.unpack_outputs`) before
any output is stored; an image pod reports its pushed digest in its termination message, and
the image's size is read from the farm's registry when the worker knows it.  An init container
(the kaniko pod's context fetch) logs first: its lines come before the build's in the step log,
and its failure (its termination message) is the step's error.

Idempotent by construction: Job names are deterministic (build, step, attempt), so running the
same attempt again (a redelivered message adopting a step, a worker restarted mid-build) finds
the Job that exists and follows it instead of creating a second one.  The log is resumed where
the stored log ends: the runner writes one ``buildfarm: following pod`` marker and then only pod
lines (the init containers' logs, then the build container's), so the lines after the last
marker (but the worker's own ``buildfarm: `` lines) say how many pod lines are already stored.

**Cross builds** (a manifest's foreign ``architectures``) run as sbuild's do: the step's input key
names the cross environment, here the package-builder image made from the sbuild runner's cross
environment (the foreign architecture added to dpkg, ``crossbuild-essential-<arch>``), and its
pod runs ``buildfarm-step package --host-arch <arch>`` (``apt-get build-dep -a``,
``dpkg-buildpackage -a -Pcross,nocheck``) in that image, ``--no-arch-all`` for a step that is
not its source's primary one.  ``buildfarm env image --cross arm64`` pushes the image.

Every wait is bounded: the pod may stay Pending ``PENDING_TIMEOUT_SECONDS``, then run at most the
Job's ``activeDeadlineSeconds`` (Kubernetes kills it then) plus ``FINISH_MARGIN_SECONDS``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kubernetes.client.exceptions import ApiException

from buildfarm.backends.fs import file_sha256
from buildfarm.backends.registry import RegistryClient
from buildfarm.environments import host_architecture
from buildfarm.model import names
from buildfarm.model.errors import BuildfarmError, PermanentError
from buildfarm.model.images import registry_host, split_reference
from buildfarm.model.logkeys import step_log_key
from buildfarm.model.settinggroups import BuildersSettings, RegistrySettings
from buildfarm.model.types import PACKAGE_SUFFIXES, RunnerKind, StepKind
from buildfarm.runners import kubespecs
from buildfarm.runners.base import BuilderObject, BuiltImage, StepJob, StepResult
from buildfarm.runners.kubeapi import API_TIMEOUT, KubeApi, make_api_client, permanent_error
from buildfarm.runners.lost import StepLost

log = logging.getLogger(__name__)

T = TypeVar("T")

ENVIRONMENT_PREFIX = "kubernetes:"
"""A Kubernetes build's environment id: this prefix and the package-builder image by digest."""
PENDING_TIMEOUT_SECONDS = 900.0
"""How long a pod may wait for a node and its image (a large builder image pull takes minutes)."""
FINISH_MARGIN_SECONDS = 120.0
"""After activeDeadlineSeconds Kubernetes stops the pod; this long more for the status to show it."""
FOLLOW_MARKER = "buildfarm: following pod "
WAITING_FAILURES = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
"""Container waiting reasons that will not resolve by themselves: the step fails at once."""
EXIT_MEANINGS = {2: "bad input (source download, sha256 or unpacking)", 3: "the outputs upload failed"}


class RemoteStore(Protocol):
    """What the runner needs of the artifact store: URLs for pods, the upload slot, the log."""

    def presigned_url(self, sha256: str, expires: timedelta | None = None) -> str: ...

    def presigned_put_url(self, key: str, expires: timedelta) -> str: ...

    def fetch_key(self, key: str, dest: Path, max_bytes: int | None = None) -> None: ...

    def delete_key(self, key: str) -> None: ...

    def read_log(self, key: str, offset: int = 0) -> tuple[bytes, int]: ...


def upload_key(build_id: int, step_name: str, attempt: int) -> str:
    return f"uploads/{build_id}/{names.to_safe(step_name)}/{attempt}.tar.gz"


def resume_line(stored_log: bytes) -> int:
    """How many pod log lines the stored step log already holds (0: none, or no marker yet)."""
    text = stored_log.decode("utf-8", "replace")
    position = text.rfind("\n" + FOLLOW_MARKER)
    if position < 0:
        position = 0 if text.startswith(FOLLOW_MARKER) else -1
    else:
        position += 1
    if position < 0:
        return 0
    marker, _, after = text[position:].partition("\n")
    match = re.search(r"from log line ([0-9]+)", marker)
    start = int(match.group(1)) if match else 0
    # The worker's own lines (an adoption notice) may follow the pod's: they are not pod lines.
    return start + sum(1 for line in after.splitlines() if not line.startswith("buildfarm: "))


def _attempt_of(obj: Any) -> tuple[int, str, int] | None:
    """(build id, step name, attempt) from a builder object's labels and annotations."""
    labels = obj.metadata.labels or {}
    annotations = obj.metadata.annotations or {}
    try:
        build_id = int(labels[f"{kubespecs.LABEL_PREFIX}build-id"])
        attempt = int(labels[f"{kubespecs.LABEL_PREFIX}attempt"])
        name = annotations[f"{kubespecs.LABEL_PREFIX}step-name"]
    except (KeyError, ValueError):
        return None
    return build_id, str(name), attempt


class KubernetesRunner:
    """:class:`~buildfarm.runners.base.Runner` with one builder Job per step."""

    name: str = RunnerKind.KUBERNETES

    def __init__(
        self,
        builders: BuildersSettings,
        registry: RegistrySettings,
        store: RemoteStore,
        *,
        mirrored: bool = False,
        api: KubeApi | None = None,
    ) -> None:
        self.builders = builders
        self.registry = registry
        self.pods = kubespecs.PodSettings(builders, registry.url, mirrored)
        self.store = store
        self._api = api
        self.poll_seconds = 2.0

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi(make_api_client(self.builders), self.builders.namespace)
        return self._api

    # -- builder objects for the orphan reaper (runners.base.ListsBuilders) ---------------------

    def list_builders(self) -> list[BuilderObject]:
        """Every builder Job and pod of the farm in the builder namespace (by the farm's labels)."""
        jobs = [
            BuilderObject("job", j.metadata.name, _attempt_of(j))
            for j in self.api.list_jobs(kubespecs.BUILDER_SELECTOR)
        ]
        pods = [
            BuilderObject("pod", p.metadata.name, _attempt_of(p))
            for p in self.api.list_pods(kubespecs.BUILDER_SELECTOR)
        ]
        return jobs + pods

    def delete_builder(self, builder: BuilderObject) -> None:
        if builder.kind == "job":
            self.api.delete_job(builder.name)
        else:
            self.api.delete_pod(builder.name)

    def builder_image(self) -> str:
        """The package-builder image as pods must name it: by digest.  ``builder_image`` naming a
        tag on the farm's registry (``buildfarm env image`` pushes one per environment and moves
        the tag) is resolved there, so a moved tag makes a new environment id; a digest, or an
        image outside the farm's registry, is used as written."""
        return self._by_digest(self.builders.image)

    def _by_digest(self, image: str) -> str:
        if "@sha256:" in image or not self.registry.url or "/" not in image:
            return image
        host, repository, tag = split_reference(image)
        if host != registry_host(self.registry.url):
            return image
        digest = RegistryClient(self.registry.url, auth=self.registry.auth()).manifest(repository, tag)[1]
        return f"{host}/{repository}@{digest}"

    def environment_id(self) -> str:
        # The image is the build environment: its digest, made from the environment tarball
        # (runners/builderimage.py), changes whenever the environment does.
        return f"{ENVIRONMENT_PREFIX}{self.builder_image()}"

    def native_architecture(self) -> str:
        """The architecture of the package-builder image (the worker's own: one image for a
        cluster of one architecture)."""
        return host_architecture()

    def cross_environment_id(self, host_arch: str) -> str:
        """The cross environment of builder pods for ``host_arch``: the package-builder image of
        the sbuild runner's cross environment (``buildfarm env image --cross arm64`` pushes it as
        ``builder_image``'s tag plus ``-cross-arm64``), by digest as ``builder_image`` is."""
        return f"{ENVIRONMENT_PREFIX}{self._by_digest(cross_image(self.builders.image, host_arch))}"

    def image_of(self, job: StepJob) -> str:
        """The package-builder image ``job``'s input key names (its build's environment id), so a
        retried or late step runs in the environment its key was computed with."""
        if job.environment_id.startswith(ENVIRONMENT_PREFIX):
            return job.environment_id.removeprefix(ENVIRONMENT_PREFIX)
        return self.builder_image()

    # -- the Job ---------------------------------------------------------------------------------

    def manifest(self, job: StepJob) -> dict[str, Any]:
        """The Job this step runs as, with fresh presigned URLs (what ``run`` sends)."""
        expires = timedelta(seconds=self.builders.deadline_seconds + PENDING_TIMEOUT_SECONDS + 3600)
        expires = min(expires, timedelta(days=7))
        if not job.source_sha256:  # the engine fetched it for us: its name is its sha256
            job.source_sha256 = file_sha256(job.source_tarball)[0]
        source = self.store.presigned_url(job.source_sha256, expires)
        upload = ""
        if job.kind == StepKind.PACKAGE:
            upload = self.store.presigned_put_url(
                upload_key(job.build_id, job.step_name, job.attempt), expires
            )
        cross = job.host_arch if job.host_arch not in ("", self.native_architecture()) else None
        pods = replace(self.pods, package_image=self.image_of(job), cross_arch=cross)
        return kubespecs.builder_job(job, pods, kubespecs.StepUrls(source, upload))

    def exists(self, build_id: int, step_name: str, attempt: int) -> bool:
        """Whether this attempt's Job exists (a redelivered message then adopts it)."""
        return self.api.read_job(kubespecs.job_name(build_id, step_name, attempt)) is not None

    def cancel(self, build_id: int, step_name: str, attempt: int) -> None:
        self.api.delete_job(kubespecs.job_name(build_id, step_name, attempt))

    def run(self, job: StepJob) -> StepResult:
        name = kubespecs.job_name(job.build_id, job.step_name, job.attempt)
        existing = self.api.read_job(name)
        skip = 0
        if existing is None:
            body = self.manifest(job)
            created = self.api.create_job(body)
            job.log(
                f"buildfarm: {'created' if created else 'found'} Job {self.api.namespace}/{name}: "
                + kubespecs.describe(body)
            )
        else:
            stored, _ = self.store.read_log(step_log_key(job.build_id, job.step_name, job.attempt))
            skip = resume_line(stored)
            job.log(f"buildfarm: Job {self.api.namespace}/{name} exists: following it (adopted)")
        stop_watch = threading.Event()
        watcher = threading.Thread(
            target=self._delete_on_cancel, args=(name, job.cancel, stop_watch), daemon=True
        )
        watcher.start()
        try:
            result = self._follow(name, job, skip)
        finally:
            stop_watch.set()
            watcher.join()
        return result

    def _delete_on_cancel(self, name: str, cancel: threading.Event, stop: threading.Event) -> None:
        while not stop.is_set():
            if cancel.wait(0.5):
                with contextlib.suppress(BuildfarmError):
                    self.api.delete_job(name)
                    for pod in self.api.job_pods(name):
                        self.api.delete_pod(pod.metadata.name)
                return

    # -- following the pod ---------------------------------------------------------------------

    def _wait_started(self, name: str, job: StepJob) -> Any:
        """The Job's pod once it (or its first init container) runs or ended; None when the Job
        (or pod) vanished.  A context download in the init container is running, not Pending."""
        deadline = time.monotonic() + PENDING_TIMEOUT_SECONDS
        while True:
            if job.cancel.is_set():
                return None
            pods = self.api.job_pods(name)
            if not pods:
                existing = self.api.read_job(name)
                if existing is None or _job_finished(existing):
                    return None  # gone, or ended and its pod deleted: nothing left to follow
            if pods:
                pod = pods[-1]
                if pod.status.phase in ("Running", "Succeeded", "Failed") or _initializing(pod):
                    return pod
                stuck = _cannot_start(pod)
                if stuck is not None:
                    raise PermanentError(stuck)
            if time.monotonic() > deadline:
                raise PermanentError(
                    f"builder pod of Job {name} stayed Pending {PENDING_TIMEOUT_SECONDS:.0f} s "
                    "(no node with room, or the image cannot be pulled)"
                )
            time.sleep(self.poll_seconds)

    def _follow(self, name: str, job: StepJob, skip: int) -> StepResult:
        try:
            pod = self._wait_started(name, job)
        except PermanentError as exc:
            self._cleanup(name, job)
            return StepResult(False, [], str(exc))
        if pod is None:
            return self._vanished(name, job)
        pod_name = pod.metadata.name
        job.log(f"{FOLLOW_MARKER}{pod_name} from log line {skip}")
        deadline = time.monotonic() + self.builders.deadline_seconds + FINISH_MARGIN_SECONDS
        last_line = ""
        containers = [c.name for c in pod.spec.init_containers or []] + [kubespecs.CONTAINER]
        while True:
            seen = 0
            # Containers run one after the other: the init containers' logs come first, whole.
            # One not started yet has no log (400): this pass ends there, the next goes further.
            lines = itertools.chain.from_iterable(self.api.stream_log(pod_name, c) for c in containers)
            for line in lines:
                seen += 1
                if seen > skip:
                    job.log(line)
                    if line.strip():
                        last_line = line.strip()
            skip = max(skip, seen)
            if job.cancel.is_set():
                return self._vanished(name, job)
            current = self._current_pod(pod_name)
            if current is None:
                return self._vanished(name, job)
            if current.status.phase in ("Succeeded", "Failed"):
                return self._collect(name, job, current, last_line)
            stuck = _cannot_start(current)  # the build container after an init container, say
            if stuck is not None:
                self._cleanup(name, job)
                return StepResult(False, [], stuck)
            if time.monotonic() > deadline:
                self._cleanup(name, job)
                return StepResult(False, [], f"builder pod {pod_name} still running past the Job deadline")
            time.sleep(self.poll_seconds)

    def _current_pod(self, pod_name: str) -> Any | None:
        try:
            return self.api.call(
                f"reading pod {pod_name}",
                lambda: self.api.core.read_namespaced_pod(
                    pod_name, self.api.namespace, _request_timeout=API_TIMEOUT
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise permanent_error(f"reading pod {pod_name}", exc) from exc

    def _vanished(self, name: str, job: StepJob) -> StepResult:
        if job.cancel.is_set():
            self._cleanup(name, job)
            return StepResult(False, [], f"builder Job {name} deleted: cancelled or lease lost")
        failure = self._job_failure(name)
        if failure is not None:  # Kubernetes ended it (deadline): a failure, not a lost pod
            self._cleanup(name, job)
            return StepResult(False, [], failure)
        job.log(f"buildfarm: builder Job {name} or its pod vanished; the step goes back to the queue")
        raise StepLost(name)

    def _job_failure(self, name: str) -> str | None:
        existing = self.api.read_job(name)
        for condition in (existing.status.conditions or []) if existing is not None else []:
            if condition.type == "Failed" and condition.status == "True":
                return f"builder Job {name} failed: {condition.reason}: {condition.message or ''}".rstrip(
                    ": "
                )
        return None

    def _collect(self, name: str, job: StepJob, pod: Any, last_line: str) -> StepResult:
        terminated = _terminated(pod)
        code = terminated.exit_code if terminated is not None else None
        try:
            if job.kind == StepKind.IMAGE:
                return self._image_result(job, pod, terminated, code, last_line)
            return self._package_result(job, pod, code, last_line)
        finally:
            self._cleanup(name, job)

    def _package_result(self, job: StepJob, pod: Any, code: int | None, last_line: str) -> StepResult:
        if code not in (0, 1):
            return StepResult(False, [], _pod_failure(pod, code, last_line), killed_by=killed_by(pod))
        from buildfarm.runners.outputs import unpack_outputs

        archive = job.workdir / "outputs.tar.gz"
        key = upload_key(job.build_id, job.step_name, job.attempt)
        self.store.fetch_key(key, archive, max_bytes=self.builders.max_outputs_bytes)
        outcome = unpack_outputs(archive, job.workdir / "outputs")
        archive.unlink(missing_ok=True)
        if not outcome.ok:
            return StepResult(False, [], outcome.error or f"build failed: {last_line}")
        if code != 0:
            return StepResult(False, [], f"buildfarm-step exited 1 but its archive says ok: {last_line}")
        if not any(p.name.endswith(PACKAGE_SUFFIXES) for p in outcome.files):
            return StepResult(False, [], "the build succeeded but produced no .deb")
        return StepResult(True, list(outcome.files))

    def _image_result(
        self, job: StepJob, pod: Any, terminated: Any, code: int | None, last_line: str
    ) -> StepResult:
        assert job.image is not None
        if code != 0:
            return StepResult(False, [], _pod_failure(pod, code, last_line), killed_by=killed_by(pod))
        digest = (terminated.message or "").strip()
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            return StepResult(False, [], f"image builder reported no digest (termination message {digest!r})")
        size = self._image_size(job, job.image.destination, digest)
        return StepResult(True, [], images=[BuiltImage(job.image.destination, digest, size)])

    def _image_size(self, job: StepJob, reference: str, digest: str) -> int:
        """Config + layer bytes of the pushed manifest, from the farm's registry when the worker
        knows it; 0 otherwise.  The image is pushed: failing to measure it fails nothing."""
        if not self.registry.url:
            job.log(f"buildfarm: pushed {reference}@{digest} (no registry_url: size not measured)")
            return 0
        try:
            _host, repository, _tag = split_reference(reference)
            size = RegistryClient(self.registry.url, auth=self.registry.auth()).image_size(repository, digest)
        except (BuildfarmError, KeyError, TypeError, ValueError) as exc:
            log.warning("measuring %s@%s failed: %s", reference, digest, exc)
            job.log(
                f"buildfarm: pushed {reference}@{digest}; its size could not be read ({exc}): recorded as 0"
            )
            return 0
        job.log(f"buildfarm: pushed {reference}@{digest} ({size} bytes)")
        return size

    def _cleanup(self, name: str, job: StepJob) -> None:
        """The log is in the store and the archive fetched: the Job and the upload slot can go."""
        with contextlib.suppress(BuildfarmError):
            self.api.delete_job(name)
        if job.kind == StepKind.PACKAGE:
            with contextlib.suppress(BuildfarmError):
                self.store.delete_key(upload_key(job.build_id, job.step_name, job.attempt))


def cross_image(image: str, host_arch: str) -> str:
    """The package-builder image of the cross environment for ``host_arch``: ``image``'s tag
    with ``-cross-<arch>`` (``latest`` when it names none)."""
    if "@" in image:
        raise PermanentError(
            f"cross-building for {host_arch} in builder pods needs builder_image to be a tag (it is "
            f"{image}): the cross image is found beside it as <tag>-cross-{host_arch}"
        )
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag: the colon (if any) was a registry port
        name, tag = image, "latest"
    return f"{name}:{tag}-cross-{host_arch}"


def _job_finished(job: Any) -> bool:
    conditions = job.status.conditions if job.status is not None else None
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions or [])


def _waiting(pod: Any) -> tuple[str, str]:
    for status in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]:
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason:
            return str(waiting.reason), str(waiting.message or "")
    return "", ""


def _cannot_start(pod: Any) -> str | None:
    """Why a container of the pod will never start (its image cannot be pulled...), or None."""
    reason, message = _waiting(pod)
    if reason in WAITING_FAILURES:
        return f"builder pod {pod.metadata.name} cannot start: {reason}: {message}"
    return None


def _initializing(pod: Any) -> bool:
    """An init container runs or ran: the pod is past scheduling and image pulls."""
    for status in pod.status.init_container_statuses or []:
        if status.state and (status.state.running or status.state.terminated):
            return True
    return False


def _terminated(pod: Any) -> Any | None:
    for status in pod.status.container_statuses or []:
        if status.name == kubespecs.CONTAINER and status.state and status.state.terminated:
            return status.state.terminated
    return None


def killed_by(pod: Any) -> str | None:
    """``OOMKilled`` when the kubelet killed the builder for its memory limit: nothing is known
    about the package, so the engine builds the step again on a new attempt (bounded)."""
    statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
    for status in statuses:
        terminated = status.state.terminated if status.state else None
        if terminated is not None and terminated.reason == "OOMKilled":
            return "OOMKilled"
    return None


def _init_failure(pod: Any) -> str | None:
    """The first init container that failed, as one line: its termination message says why."""
    for status in pod.status.init_container_statuses or []:
        terminated = status.state.terminated if status.state else None
        if terminated is not None and terminated.exit_code != 0:
            lines = (terminated.message or "").strip().splitlines()
            why = lines[-1].strip() if lines else (terminated.reason or "failed")
            return (
                f"builder pod {pod.metadata.name}: init container {status.name} exited with status "
                f"{terminated.exit_code}: {why}"
            )
    return None


def _pod_failure(pod: Any, code: int | None, last_line: str) -> str:
    init = _init_failure(pod)
    if init is not None:
        return init
    terminated = _terminated(pod)
    if terminated is None:
        reason = pod.status.reason or "unknown"
        return f"builder pod {pod.metadata.name} failed ({reason}: {pod.status.message or last_line})"
    meaning = EXIT_MEANINGS.get(code or 0, terminated.reason or "failed")
    return f"builder pod exited with status {code}: {meaning}" + (f": {last_line}" if last_line else "")
