"""A cluster-shaped podman: namespaces as networks, Services as DNS names, pods with probes.

Each namespace is a podman network. A pod that a Service selects gets that Service's names as
network aliases: the short name ``<svc>`` only on its own namespace's network, the full names
``<svc>.<ns>``, ``<svc>.<ns>.svc`` and ``<svc>.<ns>.svc.<clusterDomain>`` on every network — so,
as in a cluster, a bare Service name does not resolve from another namespace. Workload pods run
with ``--restart always`` (restartPolicy Always); probes run as the kubelet runs them (exec in the
container, httpGet and tcpSocket from the node to the pod's IP) and gate "Ready"; a liveness probe
that fails ``failureThreshold`` times restarts the container. Hook Jobs run to completion with
their ``backoffLimit`` and ``activeDeadlineSeconds``.

Not modelled: Service port remapping (a Service whose port differs from its target is refused),
NetworkPolicy enforcement, scheduling, resource requests, PodDisruptionBudgets, rolling updates.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pods
from pods import Obj, Objects, PodContext, PodError

ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
INIT_RETRY_SECONDS = 900
"""How long a pod's failing init containers run again (back-off 10 s, 20 s, ... 5 min, as the
kubelet's) before the harness gives up on the pod."""
EXEC_SLACK_SECONDS = 3.0
"""Added to an exec probe's timeoutSeconds: `podman exec` itself takes ~0.5-2 s on a loaded machine."""


def podman_base(storage: list[str]) -> list[str]:
    return [
        "podman",
        *storage,
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Probe:
    kind: str  # readiness, liveness, startup
    spec: Obj
    next_due: float
    failures: int = 0
    succeeded: bool = False


@dataclass
class Pod:
    namespace: str
    name: str
    workload: str
    template_hash: str
    container: str  # podman container name
    spec: Obj
    main: Obj
    ctx: PodContext
    probes: list[Probe] = field(default_factory=list)
    ready: bool = False
    restarts_by_liveness: int = 0
    started: float = field(default_factory=time.monotonic)
    error: str = ""


class Cluster:
    def __init__(
        self, prefix: str, state: Path, storage: list[str], cluster_domain: str = "cluster.local"
    ) -> None:
        self.prefix = prefix
        self.state = state
        self.podman = podman_base(storage)
        self.cluster_domain = cluster_domain
        self.objects = Objects()
        self.services: dict[tuple[str, str], Obj] = {}
        self.namespaces: list[str] = []
        self.pods: dict[tuple[str, str], Pod] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.api_env: dict[str, str] = {}
        self.api_hosts: list[str] = []
        self.service_account: Path | None = None
        self.published: dict[tuple[str, str], int] = {}  # (namespace, service) -> host port
        self.events: list[str] = []
        self.prober = threading.Thread(target=self._probe_loop, daemon=True)

    # -- podman ---------------------------------------------------------------------------------

    def pm(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.podman, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise PodError(f"podman {args[0]} failed: {done.stderr.strip()[-500:]}")
        return done

    def network(self, namespace: str) -> str:
        return f"{self.prefix}-{namespace}"

    def ensure_namespace(self, namespace: str) -> None:
        if namespace in self.namespaces:
            return
        net = self.network(namespace)
        if self.pm("network", "exists", net, check=False).returncode != 0:
            self.pm("network", "create", net)
        self.namespaces.append(namespace)

    def gateway(self, namespace: str) -> str:
        out = self.pm("network", "inspect", self.network(namespace), "--format", "{{json .Subnets}}").stdout
        return str(json.loads(out)[0]["gateway"])

    def bring_up(self, namespace: str, image: str) -> None:
        """A sleeping infra container so the network's bridge (and its gateway IP) exists."""
        name = f"{self.prefix}-infra-{namespace}"
        if self.pm("container", "exists", name, check=False).returncode == 0:
            return
        self.pm(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            self.network(namespace),
            *ULIMITS,
            image,
            "sleep",
            "infinity",
        )

    # -- objects --------------------------------------------------------------------------------

    def apply(self, obj: Obj, namespace: str) -> None:
        kind, meta = obj["kind"], obj["metadata"]
        ns = meta.get("namespace", namespace)
        key = (ns, meta["name"])
        if kind == "Namespace":
            self.ensure_namespace(meta["name"])
        elif kind == "Secret":
            self.objects.secrets[key] = obj
        elif kind == "ConfigMap":
            self.objects.config_maps[key] = obj
        elif kind == "Service":
            self.services[key] = obj

    def aliases(self, pod_ns: str, labels: dict[str, str], ports: list[Obj]) -> dict[str, list[str]]:
        """network -> aliases for a pod with these labels (the Services selecting it)."""
        found: dict[str, list[str]] = {self.network(ns): [] for ns in self.namespaces}
        for (ns, name), svc in self.services.items():
            selector = svc["spec"].get("selector") or {}
            if ns != pod_ns or not selector or any(labels.get(k) != v for k, v in selector.items()):
                continue
            for port in svc["spec"].get("ports") or []:
                target = port.get("targetPort", port["port"])
                number = next((p["containerPort"] for p in ports if p.get("name") == target), target)
                if number != port["port"]:
                    raise PodError(
                        f"service {name}: port {port['port']} -> {number} remapping is not modelled"
                    )
            full = [f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.{self.cluster_domain}"]
            for other in self.namespaces:
                found[self.network(other)] += ([name] if other == ns else []) + full
        return found

    # -- pods -----------------------------------------------------------------------------------

    def _context(self, namespace: str, name: str, spec: Obj, mounts_token: bool) -> PodContext:
        root = self.state / "pods" / namespace / name
        root.mkdir(parents=True, exist_ok=True)
        return PodContext(
            namespace=namespace,
            name=name,
            node=f"{self.prefix}-node",
            root=root,
            claims=self.state / "claims" / namespace,
            objects=self.objects,
            service_account=self.service_account if mounts_token else None,
            api_env=dict(self.api_env) if mounts_token else {},
        )

    def _mounts_token(self, namespace: str, spec: Obj) -> bool:
        if "automountServiceAccountToken" in spec:
            return bool(spec["automountServiceAccountToken"])
        return False  # every ServiceAccount of this chart says false; the pod spec decides

    def _create(  # noqa: PLR0917
        self,
        namespace: str,
        name: str,
        spec: Obj,
        container: Obj,
        ctx: PodContext,
        labels: dict[str, str],
        restart: str,
        attach: bool,
        serve: bool = True,
    ) -> list[str]:
        fs_group = (spec.get("securityContext") or {}).get("fsGroup")
        volumes = pods.prepare_volumes(spec, ctx, fs_group)
        args, env = pods.run_args(self.podman, spec, container, ctx, volumes)
        entry, argv = pods.command_line(container, env)
        # Only a serving container is behind its Services (an init container is not Ready yet);
        # named target ports are looked up in every container of the pod.
        ports = [p for c in spec.get("containers") or [] for p in c.get("ports") or []]
        nets = self.aliases(namespace, labels, ports) if serve else {self.network(namespace): []}
        net_args = []
        own = self.network(namespace)
        for net, names in sorted(nets.items(), key=lambda kv: kv[0] != own):
            if net != own and not names:
                continue
            net_args += ["--network", net + (":" + ",".join(f"alias={a}" for a in names) if names else "")]
        search = [f"{namespace}.svc.{self.cluster_domain}", f"svc.{self.cluster_domain}", self.cluster_domain]
        hosts = [f"--add-host={h}" for h in self.api_hosts] if ctx.service_account is not None else []
        publish = []
        for (ns, svc_name), port in self.published.items() if serve else []:
            svc = self.services.get((ns, svc_name))
            selector = (svc or {}).get("spec", {}).get("selector") or {}
            if ns == namespace and selector and all(labels.get(k) == v for k, v in selector.items()):
                publish += ["--publish", f"127.0.0.1:{port}:{svc['spec']['ports'][0]['port']}"]  # type: ignore[index]
        return [
            "run",
            *([] if attach else ["-d"]),
            "--name",
            f"{self.prefix}-{namespace}-{name}-{container['name']}",
            "--restart",
            restart,
            *ULIMITS,
            *net_args,
            *[f"--dns-search={s}" for s in search],
            *hosts,
            *publish,
            *args,
            *entry,
            container["image"],
            *argv,
        ]

    def run_init_containers(
        self, namespace: str, name: str, spec: Obj, ctx: PodContext, labels: dict[str, str]
    ) -> None:
        for init in spec.get("initContainers") or []:
            cname = f"{self.prefix}-{namespace}-{name}-{init['name']}"
            self.pm("rm", "-f", cname, check=False)
            done = self.pm(
                *self._create(namespace, name, spec, init, ctx, labels, "no", attach=True, serve=False),
                timeout=1800,
                check=False,
            )
            self.pm("rm", "-f", cname, check=False)
            if done.returncode != 0:
                raise PodError(
                    f"init container {init['name']} of {name} exited {done.returncode}: {done.stderr[-500:]}"
                )

    def start_workload(self, obj: Obj, namespace: str) -> Pod:
        """The one pod of a Deployment, StatefulSet or DaemonSet (one node, one replica)."""
        meta, template = obj["metadata"], obj["spec"]["template"]
        ns = meta.get("namespace", namespace)
        self.ensure_namespace(ns)
        thash = _hash([template, self._inputs_of(template["spec"], ns)])
        name = f"{meta['name']}-0" if obj["kind"] == "StatefulSet" else f"{meta['name']}-{thash}"
        existing = [p for p in self.pods.values() if p.namespace == ns and p.workload == meta["name"]]
        for old in existing:
            if old.template_hash == thash:
                return old
            self.delete_pod(old)
        spec = json.loads(json.dumps(template["spec"]))
        for claim in obj["spec"].get("volumeClaimTemplates") or []:
            spec.setdefault("volumes", []).append(
                {
                    "name": claim["metadata"]["name"],
                    "persistentVolumeClaim": {"claimName": f"{claim['metadata']['name']}-{meta['name']}-0"},
                }
            )
        main = spec["containers"][0]
        if len(spec["containers"]) > 1:
            raise PodError(f"{meta['name']}: pods with {len(spec['containers'])} containers are not modelled")
        ctx = self._context(ns, name, spec, self._mounts_token(ns, spec))
        labels = template["metadata"].get("labels") or {}
        pod = Pod(ns, name, meta["name"], thash, f"{self.prefix}-{ns}-{name}-{main['name']}", spec, main, ctx)
        now = time.monotonic()
        for kind in ("startup", "readiness", "liveness"):
            if f"{kind}Probe" in main:
                probe = main[f"{kind}Probe"]
                pod.probes.append(Probe(kind, probe, now + probe.get("initialDelaySeconds", 0)))
        with self.lock:
            self.pods[(ns, name)] = pod
        try:
            delay, deadline = 10.0, time.monotonic() + INIT_RETRY_SECONDS
            while True:  # restartPolicy Always: failed init containers run again, with back-off
                try:
                    self.run_init_containers(ns, name, spec, ctx, labels)
                    break
                except PodError as exc:
                    if time.monotonic() + delay > deadline or self.stop.is_set():
                        raise
                    self.events.append(f"{ns}/{name}: {exc}; again in {delay:.0f} s")
                    time.sleep(delay)
                    delay = min(delay * 2, 300)
            self.pm("rm", "-f", pod.container, check=False)
            self.pm(*self._create(ns, name, spec, main, ctx, labels, "always", attach=False), timeout=300)
        except PodError as exc:
            pod.error = str(exc)
            self.events.append(f"{ns}/{name}: {exc}")
        return pod

    def _inputs_of(self, spec: Obj, namespace: str) -> list[Obj]:
        """What a pod reads at start (its ConfigMaps and Secrets): a change restarts it, as the
        chart's checksum annotations would — but only where the chart has them (so not here)."""
        return []

    def delete_pod(self, pod: Pod) -> None:
        grace = str(pod.spec.get("terminationGracePeriodSeconds", 30))
        self.pm("rm", "-f", "-t", grace, pod.container, timeout=120, check=False)
        for mount in (pod.ctx.root / "volumes").glob("*"):
            subprocess.run(["umount", str(mount)], capture_output=True, check=False)
        shutil.rmtree(pod.ctx.root, ignore_errors=True)
        with self.lock:
            self.pods.pop((pod.namespace, pod.name), None)

    def run_job(self, obj: Obj, namespace: str, log: Path) -> bool:
        """A Job to completion: its pod's container, again after a failure (OnFailure keeps the pod's
        volumes) up to backoffLimit, within activeDeadlineSeconds. Returns whether it succeeded."""
        meta, jspec = obj["metadata"], obj["spec"]
        ns = meta.get("namespace", namespace)
        spec = json.loads(json.dumps(jspec["template"]["spec"]))
        labels = jspec["template"]["metadata"].get("labels") or {}
        deadline = time.monotonic() + jspec.get("activeDeadlineSeconds", 3600)
        backoff = jspec.get("backoffLimit", 6)
        name = f"{meta['name']}-{_hash(obj)[:5]}"
        ctx = self._context(ns, name, spec, self._mounts_token(ns, spec))
        main = spec["containers"][0]
        delay = 10.0
        try:
            for attempt in range(backoff + 1):
                if spec.get("restartPolicy") == "Never" and attempt:
                    shutil.rmtree(ctx.root / "volumes", ignore_errors=True)
                cname = f"{self.prefix}-{ns}-{name}-{main['name']}"
                self.pm("rm", "-f", cname, check=False)
                try:
                    self.run_init_containers(ns, name, spec, ctx, labels)
                    args = self._create(ns, name, spec, main, ctx, labels, "no", attach=True)
                except PodError as exc:
                    with log.open("a") as out:
                        out.write(f"--- {meta['name']}: {exc}\n")
                    return False
                remaining = max(1.0, deadline - time.monotonic())
                try:
                    done = self.pm(*args, timeout=remaining, check=False)
                except subprocess.TimeoutExpired:
                    self.pm("rm", "-f", cname, check=False)
                    with log.open("a") as out:
                        out.write(f"--- {meta['name']}: DeadlineExceeded\n")
                    return False
                with log.open("a") as out:
                    out.write(f"--- {meta['name']} attempt {attempt + 1}: exit {done.returncode}\n")
                    out.write(done.stdout + done.stderr)
                self.pm("rm", "-f", cname, check=False)
                if done.returncode == 0:
                    return True
                if time.monotonic() + delay > deadline:
                    return False
                time.sleep(delay)  # the Job controller's back-off: 10 s, 20 s, 40 s ... 6 min
                delay = min(delay * 2, 360)
            return False
        finally:
            for mount in (ctx.root / "volumes").glob("*"):
                subprocess.run(["umount", str(mount)], capture_output=True, check=False)
            shutil.rmtree(ctx.root, ignore_errors=True)

    # -- probes ---------------------------------------------------------------------------------

    def pod_ip(self, pod: Pod) -> str:
        fmt = '{{(index .NetworkSettings.Networks "' + self.network(pod.namespace) + '").IPAddress}}'
        return self.pm("inspect", "--format", fmt, pod.container, check=False).stdout.strip()

    def _port(self, pod: Pod, port: str | int) -> int:
        if isinstance(port, int):
            return port
        for p in pod.main.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise PodError(f"{pod.name}: no container port named {port}")

    def probe_once(self, pod: Pod, spec: Obj) -> bool:
        timeout = float(spec.get("timeoutSeconds", 1))
        try:
            if "exec" in spec:
                done = self.pm(
                    "exec",
                    pod.container,
                    *spec["exec"]["command"],
                    timeout=timeout + EXEC_SLACK_SECONDS,
                    check=False,
                )
                return done.returncode == 0
            ip = self.pod_ip(pod)
            if not ip:
                return False
            if "httpGet" in spec:
                get = spec["httpGet"]
                url = f"http://{ip}:{self._port(pod, get['port'])}{get.get('path', '/')}"
                try:
                    with urllib.request.urlopen(url, timeout=timeout) as response:
                        return 200 <= response.status < 400
                except urllib.error.HTTPError as exc:
                    return 200 <= exc.code < 400
            if "tcpSocket" in spec:
                with socket.create_connection(
                    (ip, self._port(pod, spec["tcpSocket"]["port"])), timeout=timeout
                ):
                    return True
        except (OSError, subprocess.TimeoutExpired, PodError):
            return False
        return False

    def _probe_loop(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                current = list(self.pods.values())
            for pod in current:
                if not pod.error:
                    self._probe_pod(pod)

    def _probe_pod(self, pod: Pod) -> None:
        now = time.monotonic()
        startup = next((p for p in pod.probes if p.kind == "startup"), None)
        started = startup is None or startup.succeeded
        running = self.pm(
            "inspect", "--format", "{{.State.Running}}", pod.container, check=False
        ).stdout.strip()
        if running != "true":
            pod.ready = False
            return
        for probe in pod.probes:
            if probe.next_due > now or (probe.kind != "startup" and not started):
                continue
            if probe.kind == "startup" and probe.succeeded:
                continue
            ok = self.probe_once(pod, probe.spec)
            probe.next_due = time.monotonic() + probe.spec.get("periodSeconds", 10)
            probe.failures = 0 if ok else probe.failures + 1
            if probe.kind == "readiness":
                pod.ready = ok
            elif probe.kind == "startup" and ok:
                probe.succeeded = True
            if (
                not ok
                and probe.kind in ("liveness", "startup")
                and probe.failures >= probe.spec.get("failureThreshold", 3)
            ):
                self.events.append(
                    f"{pod.namespace}/{pod.name}: {probe.kind} probe failed {probe.failures}x: restarted"
                )
                pod.restarts_by_liveness += 1
                probe.failures = 0
                self.pm(
                    "restart",
                    "-t",
                    str(pod.spec.get("terminationGracePeriodSeconds", 30)),
                    pod.container,
                    check=False,
                    timeout=120,
                )
        if not any(p.kind == "readiness" for p in pod.probes):
            pod.ready = started

    def wait_ready(self, timeout: float, progress: Any = print) -> list[Pod]:
        """Every pod Ready within the timeout; returns those that are not."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            with self.lock:
                waiting = [p for p in self.pods.values() if not p.ready]
            names = ", ".join(sorted(p.name for p in waiting))
            if names != last:
                progress(f"e2e: not ready yet: {names or '-'}")
                last = names
            if not waiting or time.monotonic() > deadline:
                return waiting
            time.sleep(2)

    def logs(self, pod: Pod, tail: int = 30) -> str:
        done = self.pm("logs", "--tail", str(tail), pod.container, check=False)
        return (done.stdout + done.stderr).strip()

    def restart_count(self, pod: Pod) -> int:
        out = self.pm("inspect", "--format", "{{.RestartCount}}", pod.container, check=False).stdout.strip()
        return int(out) if out.isdigit() else 0

    def teardown(self) -> None:
        """Remove every container and network of this prefix and unmount the pods' tmpfs volumes
        (also what an earlier, interrupted run left)."""
        self.stop.set()
        names = self.pm("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
        mine = [n for n in names if n.startswith(self.prefix + "-")]
        if mine:
            self.pm("rm", "-f", "-t", "5", *mine, timeout=300, check=False)
        networks = self.pm("network", "ls", "--format", "{{.Name}}", check=False).stdout.split()
        for net in networks:
            if net.startswith(self.prefix + "-"):
                self.pm("network", "rm", "-f", net, check=False)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(str(self.state) + "/")), reverse=True):
            subprocess.run(["umount", mount], capture_output=True, check=False)
