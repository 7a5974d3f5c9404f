"""The cluster's state and its Job controller, served over real HTTP.

``FakeCluster`` keeps Jobs, pods and Secrets by (namespace, name), plays the Job controller (a pod
per created Job, labelled ``job-name``, owned by the Job; the Job's condition follows its pod's
end) and, through its ``Kubelet`` mixin, runs the pods. Every request body is kept (``created``)
and every request's method and path (``requests``), so tests validate exactly what the code sent.
"""

from __future__ import annotations

import itertools
import json
import shutil
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

from .api import handler
from .kubelet import Kubelet, PodRun
from .objects import Obj, copy, now, owner


class FakeCluster(Kubelet):
    def __init__(
        self, workdir: Path, address: tuple[str, int] = ("127.0.0.1", 0), tls: ssl.SSLContext | None = None
    ) -> None:
        self.workdir = workdir
        self.jobs: dict[tuple[str, str], Obj] = {}
        self.secrets: dict[tuple[str, str], Obj] = {}  # created through the API (a bootstrap Job's token)
        self.pods: dict[tuple[str, str], Obj] = {}
        self.runs: dict[tuple[str, str], PodRun] = {}
        self.created: list[Obj] = []  # every body POSTed, as sent
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.gate = threading.Event()  # while clear, pods run but their command does not start
        self.unpullable: set[str] = set()  # images whose pull fails: the container waits, ErrImagePull
        self.gate.set()
        self.lock = threading.Condition()
        self._versions = itertools.count(1)
        self.server = ThreadingHTTPServer(address, handler(self))
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:  # what an in-cluster client needs: https with the ServiceAccount's ca.crt
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))
        return path

    def close(self) -> None:
        self.gate.set()
        for key in list(self.pods):
            self.delete_pod(*key)
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- state --------------------------------------------------------------------------------

    def _meta(self, obj: Obj, namespace: str) -> None:
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        meta["resourceVersion"] = str(next(self._versions))

    def add_secret(self, namespace: str, body: Obj) -> Obj | None:
        """Store a Secret as created (its metadata completed); None if the name is taken."""
        key = (namespace, body["metadata"]["name"])
        with self.lock:
            if key in self.secrets:
                return None
            self._meta(body, namespace)
            self.secrets[key] = body
        return body

    def add_job(self, namespace: str, body: Obj, start: bool = True) -> Obj:
        """Store a Job and (as the Job controller does) create its pod; the kubelet runs it."""
        job = copy(body)
        self._meta(job, namespace)
        job["status"] = {"active": 1, "startTime": now()}
        name = job["metadata"]["name"]
        template = job["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{uuid.uuid4().hex[:5]}",
                "labels": {
                    **(template["metadata"].get("labels") or {}),
                    "job-name": name,
                    "batch.kubernetes.io/job-name": name,
                    "controller-uid": job["metadata"]["uid"],
                },
                "annotations": dict(template["metadata"].get("annotations") or {}),
                "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"]}
                ],
            },
            "spec": template["spec"],
        }
        with self.lock:
            self.jobs[(namespace, name)] = job
        self.add_pod(namespace, pod, start=start)
        return job

    def add_pod(self, namespace: str, pod: Obj, start: bool = False) -> Obj:
        self._meta(pod, namespace)
        pod["status"] = {
            "phase": "Pending",
            "containerStatuses": [self._status(pod["spec"]["containers"][0], {"waiting": {}})],
        }
        key = (namespace, pod["metadata"]["name"])
        with self.lock:
            self.pods[key] = pod
            self.runs[key] = PodRun()
        if start:
            threading.Thread(target=self._kubelet, args=(key,), daemon=True).start()
        return pod

    def _pod_ended(self, key: tuple[str, str], code: int) -> None:
        """The Job controller: a Job's pod ended, so the Job completes or fails with it."""
        with self.lock:
            pod = self.pods[key]
            job = self.jobs.get((key[0], owner(pod) or ""))
            if job is not None:
                kind = "Complete" if code == 0 else "Failed"
                job["status"] = {
                    "succeeded" if code == 0 else "failed": 1,
                    "conditions": [{"type": kind, "status": "True", "reason": "BackoffLimitExceeded"}],
                }

    def delete_job(self, namespace: str, name: str) -> bool:
        with self.lock:
            job = self.jobs.pop((namespace, name), None)
            owned = [k for k, p in self.pods.items() if k[0] == namespace and owner(p) == name]
        for key in owned:
            self.delete_pod(*key)
        return job is not None

    def delete_pod(self, namespace: str, name: str) -> bool:
        with self.lock:
            pod = self.pods.pop((namespace, name), None)
            run = self.runs.get((namespace, name))
            if run is not None:
                run.done = True
            self.lock.notify_all()
        if run is not None and run.process is not None and run.process.poll() is None:
            subprocess.run(["kill", "-KILL", f"-{run.process.pid}"], check=False)
        return pod is not None

    # -- what tests read ----------------------------------------------------------------------

    def job_names(self, namespace: str) -> list[str]:
        with self.lock:
            return sorted(name for ns, name in self.jobs if ns == namespace)

    def pod_names(self, namespace: str) -> list[str]:
        with self.lock:
            return sorted(name for ns, name in self.pods if ns == namespace)

    def posts(self, kind: str = "jobs") -> int:
        return sum(1 for method, path in self.requests if method == "POST" and path.endswith(f"/{kind}"))

    def pod_log(self, namespace: str, pod: str) -> list[str]:
        """Every container's lines, init containers first (as the runner stores them)."""
        with self.lock:
            return [line for lines in self.runs[(namespace, pod)].logs.values() for line in lines]


@contextmanager
def fake_cluster(workdir: Path) -> Iterator[FakeCluster]:
    """A cluster serving on a free port of 127.0.0.1 until the block ends (its pods killed)."""
    cluster = FakeCluster(workdir)
    cluster.thread.start()
    try:
        yield cluster
    finally:
        cluster.close()
