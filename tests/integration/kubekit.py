"""A Kubernetes API test double with a fake kubelet: there is no API server on these machines.

``FakeCluster`` is a real HTTP server (stdlib ``ThreadingHTTPServer``) speaking exactly the part
of the Kubernetes API the farm uses — Jobs (create, read, list by label, delete with their pods)
and pods (list by label, read, delete, log with ``follow``) — so the production code path runs
unchanged: the real ``kubernetes`` client, configured from a kubeconfig, over real HTTP.  Every
request body is kept (``created``), so tests validate exactly what the code sent.

It plays the Job controller (a pod per created Job, labelled ``job-name``) and the kubelet:
each container's command runs as a local process, init containers first and in order (the pod
``Pending`` meanwhile; one that fails fails the pod: phase ``Failed``, its status terminated
with its exit code and termination message, the build container never started).  A container's
output becomes its log, its exit code its terminated state, then the phase
``Succeeded``/``Failed`` and the Job's condition.  emptyDir volumes are per-pod host
directories shared by the pod's containers: arguments naming a mount path (or the termination
message path) are rewritten to the host path.  ``buildfarm-step package`` runs in a throw-away
overlay of the root filesystem (``unshare -m`` + overlayfs + chroot) without the host's apt
sources, the way a pod starts from an image: apt installs build dependencies into the overlay,
never into the machine; ``buildfarm-step fetch-context`` (the kaniko pod's init container,
which writes only into its emptyDir) runs on the host as it is.  Images that cannot run here
(kaniko, the sysbox dind image) run a stand-in (``python kubekit.py image-builder``): for
kaniko it reads the context only from the directory the init container unpacked, for sysbox
it fetches the context URL; it makes a one-layer image of that context and pushes it when the
destination is a plain-HTTP registry it was given (``--insecure-registry``), reporting the
manifest digest as kaniko does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

REPO = Path(__file__).parents[2]
ENTRYPOINT = REPO / "buildtools" / "builder" / "buildfarm-step"
Obj = dict[str, Any]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _matches(obj: Obj, selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, sep, value = term.partition("=")
        if not sep or "!" in key:
            raise ValueError(f"unsupported label selector term {term!r}")
        if labels.get(key) != value:
            return False
    return True


@dataclass
class PodRun:
    """One pod's life in the fake kubelet: each started container's log, in start order."""

    logs: dict[str, list[str]] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)  # containers that exited
    done: bool = False  # the pod ended or was deleted
    process: subprocess.Popen[bytes] | None = None


class FakeCluster:
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
        self.server = ThreadingHTTPServer(address, _handler(self))
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

    # -- state --------------------------------------------------------------------------------

    def _meta(self, obj: Obj, namespace: str) -> None:
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["resourceVersion"] = str(next(self._versions))

    def add_job(self, namespace: str, body: Obj, start: bool = True) -> Obj:
        """Store a Job and (as the Job controller does) create its pod; the kubelet runs it."""
        job = json.loads(json.dumps(body))
        self._meta(job, namespace)
        job["status"] = {"active": 1, "startTime": _now()}
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

    def _status(self, container: Obj, state: Obj) -> Obj:
        return {
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "ready": "running" in state,
            "restartCount": 0,
            "state": state,
        }

    def delete_job(self, namespace: str, name: str) -> bool:
        with self.lock:
            job = self.jobs.pop((namespace, name), None)
            owned = [k for k, p in self.pods.items() if k[0] == namespace and _owner(p) == name]
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

    # -- the fake kubelet ---------------------------------------------------------------------

    def _kubelet(self, key: tuple[str, str]) -> None:
        name = key[1]
        with self.lock:
            pod = self.pods.get(key)
            if pod is None:
                return
        spec = pod["spec"]
        main = spec["containers"][0]
        inits: list[Obj] = spec.get("initContainers") or []
        volumes = self._volumes(name, spec)
        init_statuses = [self._status(c, {"waiting": {"reason": "PodInitializing"}}) for c in inits]
        initializing = {"waiting": {"reason": "PodInitializing"}}
        for index, init in enumerate(inits):
            init_statuses[index] = self._status(init, {"running": {"startedAt": _now()}})
            if not self._set_status(key, "Pending", init_statuses, self._status(main, initializing)):
                return
            if index == 0:
                self.gate.wait()  # a running container that has printed nothing yet
            outcome = self._run_container(key, init, volumes)
            if outcome is None:
                return
            code, message = outcome
            init_statuses[index] = self._status(init, {"terminated": _terminated(code, message)})
            if code != 0:  # restartPolicy Never: the pod fails, its build container never starts
                self._finish(key, init_statuses, self._status(main, initializing), code)
                return
        if main["image"] in self.unpullable:  # the pod stays Pending, as a kubelet's would
            pulling = {"waiting": {"reason": "ErrImagePull", "message": f"pull of {main['image']} failed"}}
            self._set_status(key, "Pending", init_statuses, self._status(main, pulling))
            return
        running = self._status(main, {"running": {"startedAt": _now()}})
        if not self._set_status(key, "Running", init_statuses, running):
            return
        if not inits:
            self.gate.wait()
        outcome = self._run_container(key, main, volumes)
        if outcome is None:
            return
        code, message = outcome
        self._finish(key, init_statuses, self._status(main, {"terminated": _terminated(code, message)}), code)

    def _set_status(self, key: tuple[str, str], phase: str, inits: list[Obj], main: Obj) -> bool:
        with self.lock:
            pod = self.pods.get(key)
            if pod is None:
                return False
            pod["status"] = {"phase": phase, "startTime": _now(), "containerStatuses": [main]}
            if inits:
                pod["status"]["initContainerStatuses"] = json.loads(json.dumps(inits))
            return True

    def _finish(self, key: tuple[str, str], inits: list[Obj], main: Obj, code: int) -> None:
        namespace, _name = key
        phase = "Succeeded" if code == 0 else "Failed"
        with self.lock:
            self.runs[key].done = True
            self.lock.notify_all()
        if not self._set_status(key, phase, inits, main):
            return
        with self.lock:
            pod = self.pods[key]
            job = self.jobs.get((namespace, _owner(pod) or ""))
            if job is not None:
                kind = "Complete" if code == 0 else "Failed"
                job["status"] = {
                    "succeeded" if code == 0 else "failed": 1,
                    "conditions": [{"type": kind, "status": "True", "reason": "BackoffLimitExceeded"}],
                }

    def _volumes(self, pod_name: str, spec: Obj) -> dict[str, Path]:
        """The pod's emptyDirs as host directories (other volumes are not materialised)."""
        root = self.workdir / f"volumes-{pod_name}"
        found = {}
        for volume in spec.get("volumes") or []:
            if "emptyDir" in volume:
                found[volume["name"]] = root / volume["name"]
                found[volume["name"]].mkdir(parents=True, exist_ok=True)
        return found

    def _run_container(
        self, key: tuple[str, str], container: Obj, volumes: dict[str, Path]
    ) -> tuple[int, str] | None:
        """Run one container to its end: (exit code, termination message), None if deleted."""
        with self.lock:
            if key not in self.pods:
                return None
            run = self.runs[key]
            lines = run.logs.setdefault(container["name"], [])
        termination = self.workdir / f"termination-{key[1]}-{container['name']}"
        paths = {
            mount["mountPath"]: str(volumes[mount["name"]])
            for mount in container.get("volumeMounts") or []
            if mount["name"] in volumes
        }
        paths[container.get("terminationMessagePath", "/dev/termination-log")] = str(termination)
        command = self._command(container, termination, paths)
        env = {**os.environ, **{e["name"]: e.get("value", "") for e in container.get("env", [])}}
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        run.process = proc
        assert proc.stdout is not None
        with proc.stdout:
            for raw in proc.stdout:
                with self.lock:
                    lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self.lock.notify_all()
        code = proc.wait()
        with self.lock:
            run.ended.add(container["name"])
            self.lock.notify_all()
            if key not in self.pods:
                return None
        return code, termination.read_text() if termination.exists() else ""

    def _command(self, container: Obj, termination: Path, paths: dict[str, str]) -> list[str]:
        argv = [*container.get("command", []), *container.get("args", [])]
        if argv[:2] == ["buildfarm-step", "package"]:
            return self._sandboxed(argv[1:])
        argv = _rewrite_paths(argv, paths)
        if argv and argv[0] == "buildfarm-step":  # fetch-context: only its emptyDir is written
            return ["python3", str(ENTRYPOINT), *argv[1:]]
        # kaniko or the sysbox dind image: the stand-in below, with the venv's Python
        return [sys.executable, str(Path(__file__).resolve()), "image-builder", str(termination), *argv]

    def _sandboxed(self, args: list[str]) -> list[str]:
        """buildfarm-step in a throw-away overlay of / without the host's apt sources."""
        root = Path(tempfile.mkdtemp(prefix="pod-", dir=self.workdir))
        for sub in ("upper", "work", "merged"):
            (root / sub).mkdir()
        script = (
            "set -e\n"
            f"mount -t overlay overlay -o lowerdir=/,upperdir={root}/upper,workdir={root}/work "
            f"{root}/merged\n"
            f"for d in proc dev sys tmp; do mount --rbind /$d {root}/merged/$d; done\n"
            f"exec chroot {root}/merged sh -c 'rm -rf /etc/apt/sources.list /etc/apt/sources.list.d/*; "
            'exec "$@"\' pod /usr/bin/python3 "$@"\n'
        )
        return [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "kubelet",
            str(ENTRYPOINT),
            *args,
        ]

    def started(self, namespace: str, pod: str, container: str) -> bool:
        with self.lock:
            run = self.runs.get((namespace, pod))
            return run is not None and container in run.logs

    def stream_log(self, namespace: str, pod: str, container: str, follow: bool) -> Iterator[str]:
        position = 0
        while True:
            with self.lock:
                run = self.runs.get((namespace, pod))
                if run is None or container not in run.logs:
                    return
                log = run.logs[container]
                while follow and position >= len(log) and container not in run.ended and not run.done:
                    self.lock.wait(1.0)
                lines = log[position:]
                position += len(lines)
                finished = container in run.ended or run.done or not follow
            yield from lines
            if finished and position >= len(log):
                return

    def close(self) -> None:
        self.gate.set()
        for key in list(self.pods):
            self.delete_pod(*key)
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _terminated(code: int, message: str) -> Obj:
    return {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "message": message,
        "startedAt": _now(),
        "finishedAt": _now(),
    }


def _rewrite_paths(argv: list[str], paths: dict[str, str]) -> list[str]:
    """Each argument naming one of ``paths`` (whole, after ``=`` or a ``scheme://``) with its host
    path; one pass, longest path first, so a rewritten path is not rewritten again."""
    if not paths:
        return argv
    alternatives = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
    pattern = re.compile(rf"(^|=|://)({alternatives})(?=/|$)")
    return [pattern.sub(lambda m: m.group(1) + paths[m.group(2)], arg) for arg in argv]


def _owner(pod: Obj) -> str | None:
    refs = pod["metadata"].get("ownerReferences") or []
    return refs[0]["name"] if refs else None


_KINDS: dict[str, list[tuple[str, str, bool]]] = {
    # group/version -> (resource, kind, namespaced): what the farm's chart renders. Only Jobs, pods
    # and Secrets are served; helm (`--dry-run=server`, for `lookup`) maps every kind it renders.
    "v1": [
        ("namespaces", "Namespace", False),
        ("pods", "Pod", True),
        ("secrets", "Secret", True),
        ("configmaps", "ConfigMap", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
    ],
    "apps/v1": [
        ("deployments", "Deployment", True),
        ("statefulsets", "StatefulSet", True),
        ("daemonsets", "DaemonSet", True),
    ],
    "batch/v1": [("jobs", "Job", True), ("cronjobs", "CronJob", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True), ("ingresses", "Ingress", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
    "node.k8s.io/v1": [("runtimeclasses", "RuntimeClass", False)],
}


def _resources(group_version: str) -> Obj:
    verbs = ["get", "list", "create", "delete"]
    return {
        "kind": "APIResourceList",
        "groupVersion": group_version,
        "resources": [
            {
                "name": name,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": verbs,
            }
            for name, kind, namespaced in _KINDS[group_version]
        ],
    }


def _group(group_version: str) -> Obj:
    version = {"groupVersion": group_version, "version": group_version.split("/")[1]}
    return {"name": group_version.split("/", 1)[0], "versions": [version], "preferredVersion": version}


_DISCOVERY: dict[str, Obj] = {
    "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"},
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "/apis": {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(gv) for gv in _KINDS if gv != "v1"],
    },
    **{("/api/v1" if gv == "v1" else f"/apis/{gv}"): _resources(gv) for gv in _KINDS},
}
"""Discovery: the API groups and resources this double knows (helm asks before a `lookup`)."""


def _handler(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def _send(self, code: int, body: Obj) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason}
            self._send(code, {**body, "message": message, "code": code})

        def _route(self) -> tuple[str, str, str | None, str | None, dict[str, list[str]]]:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            segments = parts.path.strip("/").split("/")
            cluster.requests.append((self.command, parts.path))
            # /api/v1/namespaces/NS/pods[/NAME[/log]]  or  /apis/batch/v1/namespaces/NS/jobs[/NAME]
            offset = 2 if segments[0] == "api" else 3
            if len(segments) < offset + 3 or segments[offset] != "namespaces":
                return "", "", None, None, query
            namespace, kind = segments[offset + 1], segments[offset + 2]
            name = segments[offset + 3] if len(segments) > offset + 3 else None
            sub = segments[offset + 4] if len(segments) > offset + 4 else None
            return namespace, kind, name, sub, query

        def do_GET(self) -> None:
            discovery = _DISCOVERY.get(urlsplit(self.path).path.rstrip("/"))
            if discovery is not None:  # what helm's `lookup` (--dry-run=server) asks first
                cluster.requests.append((self.command, self.path))
                return self._send(200, discovery)
            namespace, kind, name, sub, query = self._route()
            stores = {"jobs": cluster.jobs, "pods": cluster.pods, "secrets": cluster.secrets}
            store = stores.get(kind)
            if store is None:
                return self._status(404, "NotFound", f"no route {self.path}")
            if name is None:
                selector = query.get("labelSelector", [""])[0]
                with cluster.lock:
                    items = [o for (ns, _), o in store.items() if ns == namespace and _matches(o, selector)]
                    body = json.loads(json.dumps(items))
                kind_name = {"jobs": "JobList", "pods": "PodList", "secrets": "SecretList"}[kind]
                api = "batch/v1" if kind == "jobs" else "v1"
                return self._send(200, {"apiVersion": api, "kind": kind_name, "metadata": {}, "items": body})
            with cluster.lock:
                obj = (
                    json.loads(json.dumps(store.get((namespace, name))))
                    if (namespace, name) in store
                    else None
                )
            if obj is None:
                return self._status(404, "NotFound", f'{kind} "{name}" not found')
            if sub == "log":
                default = obj["spec"]["containers"][0]["name"]
                container = query.get("container", [default])[0]
                if not cluster.started(namespace, name, container):
                    return self._status(
                        400,
                        "BadRequest",
                        f'container "{container}" in pod "{name}" is waiting to start: PodInitializing',
                    )
                return self._log(namespace, name, container, query.get("follow", ["false"])[0] == "true")
            return self._send(200, obj)

        def _log(self, namespace: str, pod: str, container: str, follow: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for line in cluster.stream_log(namespace, pod, container, follow):
                    data = (line + "\n").encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self) -> None:
            namespace, kind, name, _sub, _query = self._route()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            cluster.created.append(body)
            if kind == "secrets" and name is None:
                secret_name = body["metadata"]["name"]
                if (namespace, secret_name) in cluster.secrets:
                    return self._status(409, "AlreadyExists", f'secrets "{secret_name}" already exists')
                cluster._meta(body, namespace)
                with cluster.lock:
                    cluster.secrets[(namespace, secret_name)] = body
                return self._send(201, body)
            if kind != "jobs" or name is not None:
                return self._status(405, "MethodNotAllowed", "only Jobs are created")
            job_name = body["metadata"]["name"]
            if (namespace, job_name) in cluster.jobs:
                return self._status(409, "AlreadyExists", f'jobs.batch "{job_name}" already exists')
            self._send(201, cluster.add_job(namespace, body))

        def do_DELETE(self) -> None:
            namespace, kind, name, _sub, _query = self._route()
            length = int(self.headers.get("Content-Length", 0))
            if length:
                self.rfile.read(length)
            deleted = (
                cluster.delete_job(namespace, name or "")
                if kind == "jobs"
                else cluster.delete_pod(namespace, name or "")
            )
            if not deleted:
                return self._status(404, "NotFound", f'{kind} "{name}" not found')
            self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    return Handler


@contextmanager
def fake_cluster(workdir: Path) -> Iterator[FakeCluster]:
    cluster = FakeCluster(workdir)
    cluster.thread.start()
    try:
        yield cluster
    finally:
        cluster.close()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the image-builder stand-in (run as a pod's process: ``python kubekit.py image-builder``) ------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _layer_of(root: Path) -> bytes:
    """A deterministic gzip tar of a directory (tarfile.add walks it sorted)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(root.iterdir()):
            tar.add(child, arcname=child.name, filter=_normalised)
    return gzip.compress(raw.getvalue(), mtime=0)


def _push_blob(base: str, repository: str, data: bytes) -> None:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = urllib.request.Request(f"{base}/v2/{repository}/blobs/uploads/", data=b"", method="POST")
    with urllib.request.urlopen(start, timeout=30) as response:
        location = urljoin(base, response.headers["Location"])
    put = urllib.request.Request(
        f"{location}{'&' if '?' in location else '?'}digest={digest}",
        data=data,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    urllib.request.urlopen(put, timeout=30).close()


def image_builder(termination: Path, argv: list[str]) -> int:
    """Build a one-layer image of the context, push it to a plain-HTTP registry if given one,
    write the manifest digest as the termination message (what kaniko's --digest-file does)."""
    options: dict[str, list[str]] = {}
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            option, value = arg[2:].split("=", 1)
            options.setdefault(option, []).append(value)
    context = options.get("context", [os.environ.get("CONTEXT_URL", "")])[0]
    if context.startswith("dir://"):  # kaniko: only what the init container unpacked
        root = Path(context.removeprefix("dir://"))
        dockerfile = Path(options["dockerfile"][0])
        if not dockerfile.is_file():
            print(f"error: no Dockerfile {dockerfile} in the context {root}", flush=True)
            return 1
        layer = _layer_of(root)
        files = sum(1 for p in root.rglob("*") if p.is_file())
        print(f"image-builder stand-in: context dir {root.name}/ with {files} file(s)", flush=True)
    else:  # the sysbox script fetches the context itself
        with urllib.request.urlopen(context, timeout=30) as response:
            layer = response.read()
        print(f"image-builder stand-in: context {len(layer)} bytes", flush=True)
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    ).encode()

    def descriptor(media_type: str, data: bytes) -> Obj:
        return {
            "mediaType": media_type,
            "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    destination = options.get("destination", [os.environ.get("DESTINATION", "")])[0]
    host, _, path = destination.partition("/")
    repository, _, tag = path.rpartition(":")
    if host in options.get("insecure-registry", []):
        base = f"http://{host}"
        _push_blob(base, repository, config)
        _push_blob(base, repository, layer)
        put = urllib.request.Request(
            f"{base}/v2/{repository}/manifests/{tag}",
            data=manifest,
            method="PUT",
            headers={"Content-Type": OCI_MANIFEST},
        )
        urllib.request.urlopen(put, timeout=30).close()
        print(f"image-builder stand-in: pushed {destination}@{digest}", flush=True)
    else:
        print("image-builder stand-in: nothing pushed (no plain-HTTP registry given)", flush=True)
    termination.write_text(digest)
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["image-builder"]:
    sys.exit(image_builder(Path(sys.argv[2]), sys.argv[3:]))
