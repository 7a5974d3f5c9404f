"""A Kubernetes API test double with a fake kubelet: there is no API server on these machines.

``FakeCluster`` is a real HTTP server (stdlib ``ThreadingHTTPServer``) speaking exactly the part
of the Kubernetes API the farm uses — Jobs (create, read, list by label, delete with their pods)
and pods (list by label, read, delete, log with ``follow``) — so the production code path runs
unchanged: the real ``kubernetes`` client, configured from a kubeconfig, over real HTTP.  Every
request body is kept (``created``), so tests validate exactly what the code sent.

It plays the Job controller (a pod per created Job, labelled ``job-name``) and the kubelet: the
pod's command runs as a local process and its output becomes the pod log, its exit code the
container's terminated state, the phase ``Succeeded``/``Failed`` and the Job's condition.
``buildfarm-step`` runs directly on the host, in a throw-away overlay of the root filesystem
(``unshare -m`` + overlayfs + chroot) without the host's apt sources, the way a pod starts from
an image: apt installs build dependencies into the overlay, never into the machine. Images that
cannot run here (kaniko, the sysbox dind image) run a stand-in that fetches the context and
reports a digest but pushes nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
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
from urllib.parse import parse_qs, urlsplit

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
    """One pod's life in the fake kubelet."""

    log: list[str] = field(default_factory=list)
    done: bool = False
    process: subprocess.Popen[bytes] | None = None


class FakeCluster:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.jobs: dict[tuple[str, str], Obj] = {}
        self.pods: dict[tuple[str, str], Obj] = {}
        self.runs: dict[tuple[str, str], PodRun] = {}
        self.created: list[Obj] = []  # every body POSTed, as sent
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.gate = threading.Event()  # while clear, pods run but their command does not start
        self.gate.set()
        self.lock = threading.Condition()
        self._versions = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

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
        pod["status"] = {"phase": "Pending", "containerStatuses": [self._status(pod, {"waiting": {}})]}
        key = (namespace, pod["metadata"]["name"])
        with self.lock:
            self.pods[key] = pod
            self.runs[key] = PodRun()
        if start:
            threading.Thread(target=self._kubelet, args=(key,), daemon=True).start()
        return pod

    def _status(self, pod: Obj, state: Obj) -> Obj:
        container = pod["spec"]["containers"][0]
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
        with self.lock:
            return list(self.runs[(namespace, pod)].log)

    # -- the fake kubelet ---------------------------------------------------------------------

    def _kubelet(self, key: tuple[str, str]) -> None:
        namespace, name = key
        with self.lock:
            pod = self.pods.get(key)
            if pod is None:
                return
            pod["status"] = {
                "phase": "Running",
                "startTime": _now(),
                "containerStatuses": [self._status(pod, {"running": {"startedAt": _now()}})],
            }
        self.gate.wait()  # a running container that has printed nothing yet
        with self.lock:
            if key not in self.pods:
                return
        container = pod["spec"]["containers"][0]
        termination = self.workdir / f"termination-{name}"
        command = self._command(container, termination)
        run = self.runs[key]
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
                    run.log.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self.lock.notify_all()
        code = proc.wait()
        message = termination.read_text() if termination.exists() else ""
        with self.lock:
            run.done = True
            self.lock.notify_all()
            pod = self.pods.get(key)
            if pod is None:
                return
            terminated = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "message": message,
                "startedAt": _now(),
                "finishedAt": _now(),
            }
            pod["status"] = {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [self._status(pod, {"terminated": terminated})],
            }
            job = self.jobs.get((namespace, _owner(pod) or ""))
            if job is not None:
                kind = "Complete" if code == 0 else "Failed"
                job["status"] = {
                    "succeeded" if code == 0 else "failed": 1,
                    "conditions": [{"type": kind, "status": "True", "reason": "BackoffLimitExceeded"}],
                }

    def _command(self, container: Obj, termination: Path) -> list[str]:
        argv = [*container.get("command", []), *container.get("args", [])]
        if argv and argv[0] == "buildfarm-step":
            return self._sandboxed(argv[1:])
        # kaniko or the sysbox dind image: a stand-in that fetches the context and pushes nothing
        context = next((a.split("=", 1)[1] for a in argv if a.startswith("--context=")), None)
        env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        context = context or env.get("CONTEXT_URL", "")
        code = (
            "import hashlib, sys, urllib.request\n"
            "data = urllib.request.urlopen(sys.argv[1], timeout=30).read()\n"
            "print(f'image-builder stand-in: context {len(data)} bytes; nothing is built or pushed')\n"
            "open(sys.argv[2], 'w').write('sha256:' + hashlib.sha256(data).hexdigest())\n"
        )
        return ["python3", "-c", code, context, str(termination)]

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

    def stream_log(self, namespace: str, pod: str, follow: bool) -> Iterator[str]:
        position = 0
        while True:
            with self.lock:
                run = self.runs.get((namespace, pod))
                if run is None:
                    return
                while follow and position >= len(run.log) and not run.done:
                    self.lock.wait(1.0)
                lines = run.log[position:]
                position += len(lines)
                finished = run.done or not follow
            yield from lines
            if finished and position >= len(self.runs[(namespace, pod)].log):
                return

    def close(self) -> None:
        self.gate.set()
        for key in list(self.pods):
            self.delete_pod(*key)
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _owner(pod: Obj) -> str | None:
    refs = pod["metadata"].get("ownerReferences") or []
    return refs[0]["name"] if refs else None


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
            namespace, kind, name, sub, query = self._route()
            store = cluster.jobs if kind == "jobs" else cluster.pods if kind == "pods" else None
            if store is None:
                return self._status(404, "NotFound", f"no route {self.path}")
            if name is None:
                selector = query.get("labelSelector", [""])[0]
                with cluster.lock:
                    items = [o for (ns, _), o in store.items() if ns == namespace and _matches(o, selector)]
                    body = json.loads(json.dumps(items))
                kind_name = "JobList" if kind == "jobs" else "PodList"
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
                return self._log(namespace, name, query.get("follow", ["false"])[0] == "true")
            return self._send(200, obj)

        def _log(self, namespace: str, pod: str, follow: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for line in cluster.stream_log(namespace, pod, follow):
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
