"""The HTTP face of the double: the Kubernetes API paths the farm (and helm's ``lookup``) call.

Routes ``/api/v1/namespaces/NS/{pods,secrets}[/NAME[/log]]`` and
``/apis/batch/v1/namespaces/NS/jobs[/NAME]`` to the cluster's state: read, list by label
selector, create (Jobs and Secrets), delete, and a pod's log (chunked, ``follow`` streams until
the container ends); the discovery documents (discovery.py) as they are. Errors are the API's
``Status`` objects with its reasons (``NotFound``, ``AlreadyExists``, ``BadRequest``), so the
real client raises what it raises against a cluster.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from .discovery import DISCOVERY
from .objects import Obj, copy, matches

if TYPE_CHECKING:
    from .cluster import FakeCluster

_LIST_KINDS = {"jobs": ("batch/v1", "JobList"), "pods": ("v1", "PodList"), "secrets": ("v1", "SecretList")}


def handler(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    """A request handler class serving ``cluster``."""

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
            discovery = DISCOVERY.get(urlsplit(self.path).path.rstrip("/"))
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
                    items = [o for (ns, _), o in store.items() if ns == namespace and matches(o, selector)]
                    body = copy(items)
                api, kind_name = _LIST_KINDS[kind]
                return self._send(200, {"apiVersion": api, "kind": kind_name, "metadata": {}, "items": body})
            with cluster.lock:
                obj = copy(store.get((namespace, name))) if (namespace, name) in store else None
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
                secret = cluster.add_secret(namespace, body)
                if secret is None:
                    secret_name = body["metadata"]["name"]
                    return self._status(409, "AlreadyExists", f'secrets "{secret_name}" already exists')
                return self._send(201, secret)
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
