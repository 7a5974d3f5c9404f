"""The Kubernetes API calls of the builder runner, each bounded and retried on transient errors.

:class:`KubeApi` wraps the ``kubernetes`` client for one namespace: Jobs and pods by name or label
selector, and a pod's log as a stream of lines.  Network errors and 5xx answers are retried
``API_ATTEMPTS`` times; what stays unanswered is a :class:`ServiceUnavailableError` naming the call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from buildfarm.model.errors import PermanentError, ServiceUnavailableError
from buildfarm.model.settinggroups import BuildersSettings
from buildfarm.runners import kubespecs

log = logging.getLogger(__name__)

T = TypeVar("T")

LOG_READ_TIMEOUT_SECONDS = 60.0
"""A log stream silent this long is reopened (and the pod's state checked): bounds every read."""
API_TIMEOUT = (5.0, 30.0)
"""Connect and read timeouts of every other API call, in seconds."""
API_ATTEMPTS = 3
"""Tries of an API call that failed on the network or with a 5xx, 1 s apart."""


def make_api_client(builders: BuildersSettings) -> client.ApiClient:
    """In-cluster configuration, or the kubeconfig of ``builders.kubeconfig`` (out of cluster)."""
    try:
        if builders.kubeconfig is not None:
            if not builders.kubeconfig.is_file():
                raise PermanentError(f"setting kubeconfig: {builders.kubeconfig} does not exist")
            loaded = config.new_client_from_config(config_file=str(builders.kubeconfig))  # type: ignore[no-untyped-call]
            return cast(client.ApiClient, loaded)
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    except ConfigException as exc:
        raise PermanentError(
            f"kubernetes runner: no cluster configuration ({exc}); set kubeconfig or run in a pod"
        ) from exc


class KubeApi:
    """The few Kubernetes calls the farm makes, with bounded retries and one-line errors."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.where = api_client.configuration.host

    def call(self, what: str, operation: Callable[[], T]) -> T:
        for attempt in range(1, API_ATTEMPTS + 1):
            try:
                return operation()
            except ApiException as exc:
                if exc.status and exc.status < 500:
                    raise
                failure = f"{exc.status} {exc.reason}"
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            if attempt < API_ATTEMPTS:
                time.sleep(1.0)
        raise ServiceUnavailableError(f"kubernetes API {self.where}: {what} failed: {failure}")

    def read_job(self, name: str) -> Any | None:
        try:
            return self.call(
                f"reading Job {name}",
                lambda: self.batch.read_namespaced_job(name, self.namespace, _request_timeout=API_TIMEOUT),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise permanent_error(f"reading Job {name}", exc) from exc

    def create_job(self, body: dict[str, Any]) -> bool:
        """Create the Job; False if one of that name exists already (followed instead)."""
        name = body["metadata"]["name"]
        try:
            self.call(
                f"creating Job {name}",
                lambda: self.batch.create_namespaced_job(
                    self.namespace, cast(Any, body), _request_timeout=API_TIMEOUT
                ),
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise permanent_error(f"creating Job {name}", exc) from exc
        return True

    def delete_job(self, name: str) -> None:
        """Delete the Job and (Foreground/Background propagation) its pods; gone already is fine."""
        body = client.V1DeleteOptions(propagation_policy="Background", grace_period_seconds=5)
        try:
            self.call(
                f"deleting Job {name}",
                lambda: self.batch.delete_namespaced_job(
                    name, self.namespace, body=body, _request_timeout=API_TIMEOUT
                ),
            )
        except ApiException as exc:
            if exc.status != 404:
                raise permanent_error(f"deleting Job {name}", exc) from exc

    def delete_pod(self, name: str) -> None:
        try:
            self.call(
                f"deleting pod {name}",
                lambda: self.core.delete_namespaced_pod(
                    name, self.namespace, grace_period_seconds=5, _request_timeout=API_TIMEOUT
                ),
            )
        except ApiException as exc:
            if exc.status != 404:
                raise permanent_error(f"deleting pod {name}", exc) from exc

    def job_pods(self, name: str) -> list[Any]:
        pods = self.list_pods(f"job-name={name}")
        return sorted(pods, key=lambda pod: pod.metadata.creation_timestamp or 0)

    def list_pods(self, selector: str) -> list[Any]:
        return self._list("listing pods", self.core.list_namespaced_pod, selector)

    def list_jobs(self, selector: str) -> list[Any]:
        return self._list("listing Jobs", self.batch.list_namespaced_job, selector)

    def _list(self, what: str, list_namespaced: Callable[..., Any], selector: str) -> list[Any]:
        try:
            result = self.call(
                what,
                lambda: list_namespaced(
                    self.namespace, label_selector=selector, _request_timeout=API_TIMEOUT
                ),
            )
        except ApiException as exc:
            raise permanent_error(what, exc) from exc
        return list(result.items)

    def stream_log(self, pod: str, container: str = kubespecs.CONTAINER) -> Iterator[str]:
        """A container's log from its first line, following it until the container ends (or the
        stream stays silent ``LOG_READ_TIMEOUT_SECONDS``: the caller then checks and reopens)."""
        try:
            response: Any = self.core.read_namespaced_pod_log(
                pod,
                self.namespace,
                container=container,
                follow=True,
                _preload_content=False,
                _request_timeout=(API_TIMEOUT[0], LOG_READ_TIMEOUT_SECONDS),
            )
        except ApiException as exc:
            if exc.status in (400, 404):  # not started yet, or gone: the caller looks at the pod
                return
            raise permanent_error(f"reading the log of {pod}", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError):
            return
        pending = b""
        try:
            for data in response.stream(64 * 1024):
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
        except (urllib3.exceptions.HTTPError, OSError):
            pass  # a dropped or silent stream: the caller decides from the pod's state
        finally:
            response.release_conn()
        if pending:
            yield pending.decode("utf-8", "replace")


def permanent_error(what: str, exc: ApiException) -> PermanentError:
    message = exc.reason or ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        message = json.loads(exc.body or "").get("message", message)
    return PermanentError(f"kubernetes API: {what}: {exc.status} {message}")
