"""The API test double's kubelet, made real: each Job the worker creates runs as podman containers.

``tests/integration/kubekit``'s ``FakeCluster`` speaks the part of the Kubernetes API the farm uses and
plays the Job controller; its kubelet runs containers as local processes. Here the same double
(served over TLS on the release network's gateway, where the worker's in-cluster configuration
finds it) runs each container of a Job's pod with podman from the pod spec — init containers
first, the pod's volumes shared, in the builder namespace's network — through the same
translation as the chart's own pods (``pods.py``), so builders get exactly the env, volumes,
security context and DNS names a builder pod would get.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

from pods import Obj, PodContext, PodError, prepare_volumes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from cluster import Cluster

import kubekit


class PodmanCluster(kubekit.FakeCluster):
    def __init__(
        self, workdir: Path, runtime: Cluster, address: tuple[str, int], tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(workdir, address, tls)
        self.runtime = runtime
        self.contexts: dict[str, tuple[PodContext, Obj]] = {}

    def _volumes(self, pod_name: str, spec: Obj) -> dict[str, Path]:
        key = next(k for k in self.pods if k[1] == pod_name)
        ctx = self.runtime._context(key[0], pod_name, spec, bool(spec.get("automountServiceAccountToken")))
        self.contexts[pod_name] = (ctx, spec)
        try:
            return prepare_volumes(spec, ctx, (spec.get("securityContext") or {}).get("fsGroup"))
        except PodError as exc:
            ctx.root.joinpath("error").write_text(str(exc))
            return {}

    def _run_container(
        self, key: tuple[str, str], container: Obj, volumes: dict[str, Path]
    ) -> tuple[int, str] | None:
        namespace, name = key
        ctx, spec = self.contexts[name]
        with self.lock:
            if key not in self.pods:
                return None
            run = self.runs[key]
            lines = run.logs.setdefault(container["name"], [])
            labels = self.pods[key]["metadata"].get("labels") or {}
        error = ctx.root / "error"
        try:
            if error.exists():
                raise PodError(error.read_text())
            args = self.runtime._create(
                namespace, name, spec, container, ctx, labels, "no", attach=True, serve=False
            )
        except PodError as exc:  # the kubelet cannot start it: the pod stays Pending, as in a cluster
            with self.lock:
                lines.append(f"kubelet: CreateContainerConfigError: {exc}")
                pod = self.pods.get(key)
                if pod is not None:
                    pod["status"] = {
                        "phase": "Pending",
                        "containerStatuses": [
                            self._status(
                                container,
                                {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}},
                            )
                        ],
                    }
            return None
        cname = f"{self.runtime.prefix}-{namespace}-{name}-{container['name']}"
        self.runtime.pm("rm", "-f", cname, check=False)
        proc = subprocess.Popen(
            [*self.runtime.podman, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
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
        self.runtime.pm("rm", "-f", cname, check=False)
        termination = ctx.root / f"termination-{container['name']}"
        with self.lock:
            run.ended.add(container["name"])
            self.lock.notify_all()
            if key not in self.pods:
                return None
        return code, termination.read_text() if termination.exists() else ""

    def delete_pod(self, namespace: str, name: str) -> bool:
        found = super().delete_pod(namespace, name)
        for container in ("build", "fetch-context", "builder"):
            self.runtime.pm("rm", "-f", f"{self.runtime.prefix}-{namespace}-{name}-{container}", check=False)
        return found
