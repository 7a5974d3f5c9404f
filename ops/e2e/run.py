"""`make e2e`: the chart, rendered and run on podman as a one-node cluster, then a build through it.

Phases (each timed): images (ops/e2e/images.py, cached), render (helm template with
ops/e2e/values-e2e.yaml), install (objects applied, workloads started, post-install hooks run in
Helm's order of weights, then every pod Ready by its probes; `helm test` pods run), build (the
example manifest submitted through the API container with the bootstrap Job's admin token; the
worker's builder Jobs run as containers in the builder namespace; apt on the host downloads every
package through Pulp content's published port and compares the bytes), upgrade (rendered again
with a changed value; changed pods recreated, PVC data and generated Secrets kept, post-upgrade
hooks run, the build still listed and its packages still served).

What it models and what only a real cluster shows: ops/e2e/README.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import images  # noqa: E402
from cluster import Cluster  # noqa: E402
from kubelet import PodmanCluster  # noqa: E402
from pods import Obj  # noqa: E402

RELEASE = "bf"
NAMESPACE = "buildfarm"
PREFIX = "bfe2e"
HOOK_KIND_ORDER = [
    "Namespace",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "Role",
    "RoleBinding",
    "Service",
    "Job",
    "Pod",
]
READY_TIMEOUT_SECONDS = 900
BUILD_TIMEOUT_SECONDS = 2400


class Phases:
    def __init__(self) -> None:
        self.times: list[tuple[str, float, str]] = []

    def run(self, name: str, action: Callable[[], str]) -> None:
        print(f"\n=== e2e phase: {name}", flush=True)
        started = time.monotonic()
        outcome = "ok"
        try:
            outcome = action() or "ok"
        except BaseException as exc:
            outcome = f"FAILED: {exc}"
            raise
        finally:
            self.times.append((name, time.monotonic() - started, outcome))

    def report(self) -> None:
        print("\n=== e2e: wall time per phase")
        for name, seconds, outcome in self.times:
            print(f"  {name:10} {seconds:7.1f} s  {outcome.splitlines()[0][:100]}")
        print(f"  {'total':10} {sum(t for _, t, _ in self.times):7.1f} s")


def helm_render(chart: Path, kubeconfig: Path, extra: list[str], upgrade: bool) -> list[Obj]:
    """`helm template` against the API test double (--dry-run=server), so the chart's `lookup` of
    its stored Secrets sees what a `helm upgrade` against a cluster would see."""
    helm = os.environ.get("HELM", str(REPO / ".helm" / "bin" / "helm"))
    subprocess.run([helm, "dependency", "build", str(chart)], check=True, capture_output=True, timeout=120)
    command = [
        helm,
        "template",
        RELEASE,
        str(chart),
        "-n",
        NAMESPACE,
        "-f",
        str(HERE / "values-e2e.yaml"),
        "--dry-run=server",
        "--disable-openapi-validation",
        "--kubeconfig",
        str(kubeconfig),
        *extra,
    ]
    if upgrade:
        command.append("--is-upgrade")
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"e2e: helm template failed: {done.stderr.strip()[-2000:]}")
    out = done.stdout
    return [d for d in yaml.safe_load_all(out) if d]


def hooks_of(objects: list[Obj], event: str) -> list[Obj]:
    found = []
    for obj in objects:
        annotations = obj["metadata"].get("annotations") or {}
        if event in (annotations.get("helm.sh/hook") or "").split(","):
            found.append(obj)

    def order(obj: Obj) -> tuple[int, int, str]:
        weight = int((obj["metadata"].get("annotations") or {}).get("helm.sh/hook-weight", "0"))
        kind = HOOK_KIND_ORDER.index(obj["kind"]) if obj["kind"] in HOOK_KIND_ORDER else len(HOOK_KIND_ORDER)
        return weight, kind, obj["metadata"]["name"]

    return sorted(found, key=order)


def is_hook(obj: Obj) -> bool:
    return "helm.sh/hook" in (obj["metadata"].get("annotations") or {})


class E2E:
    def __init__(self, state: Path, keep: bool) -> None:
        self.state = state
        self.keep = keep
        self.cluster = Cluster(PREFIX, state, images.storage_options())
        self.api: PodmanCluster | None = None
        self.log = state / "hooks.log"
        self.builders_ns = f"{NAMESPACE}-builders"
        self.job_templates: dict[str, str] = {}
        self.job_results: dict[str, bool] = {}
        self.chart = REPO / "charts" / "buildfarm"
        self.build_ids: list[int] = []
        self.ports = {
            ("buildfarm", f"{RELEASE}-buildfarm-api"): 18781,
            ("buildfarm", f"{RELEASE}-buildfarm-pulp-content"): 18816,
        }

    # -- the fake API server, where the in-cluster configuration finds it ---------------------

    def start_api(self) -> None:
        cluster = self.cluster
        cluster.ensure_namespace(NAMESPACE)
        cluster.ensure_namespace(self.builders_ns)
        cluster.bring_up(NAMESPACE, "localhost/buildfarm-e2e/debian:bookworm")
        cluster.bring_up(self.builders_ns, "localhost/buildfarm-e2e/debian:bookworm")
        gateway = cluster.gateway(NAMESPACE)
        sa = self.state / "serviceaccount"
        sa.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=kubernetes",
                "-keyout",
                str(sa / "tls.key"),
                "-out",
                str(sa / "ca.crt"),
                "-addext",
                f"subjectAltName=IP:{gateway},DNS:kubernetes.default.svc,DNS:kubernetes.default,DNS:kubernetes,"
                f"DNS:kubernetes.default.svc.cluster.local",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        (sa / "token").write_text("e2e-token")
        (sa / "namespace").write_text(NAMESPACE)
        for f in sa.iterdir():
            f.chmod(0o644)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(sa / "ca.crt", sa / "tls.key")
        (sa / "tls.key").unlink()
        self.api = PodmanCluster(self.state / "kubelet", cluster, (gateway, 443), tls)
        self.api.secrets = cluster.objects.secrets  # one store: what pods mount is what lookup finds
        self.api.thread.start()
        self.kubeconfig = self.state / "kubeconfig"
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "e2e",
                            "cluster": {
                                "server": f"https://{gateway}:443",
                                "certificate-authority": str(sa / "ca.crt"),
                            },
                        }
                    ],
                    "users": [{"name": "e2e", "user": {"token": "e2e-token"}}],
                    "contexts": [
                        {"name": "e2e", "context": {"cluster": "e2e", "user": "e2e", "namespace": NAMESPACE}}
                    ],
                    "current-context": "e2e",
                }
            )
        )
        cluster.service_account = sa
        cluster.api_env = {"KUBERNETES_SERVICE_HOST": gateway, "KUBERNETES_SERVICE_PORT": "443"}
        cluster.api_hosts = [
            f"{name}:{gateway}"
            for name in (
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ]
        print(f"e2e: Kubernetes API test double on https://{gateway}:443 (kubernetes.default.svc)")

    # -- install / upgrade --------------------------------------------------------------------

    def install(self, objects: list[Obj], upgrade: bool) -> str:
        """What `helm install`/`upgrade` then the controllers do: pre hooks; the objects; every
        workload's pod and every (non-hook) Job started at once, as controllers would; post hooks
        in order; then every Job complete and every pod Ready."""
        cluster = self.cluster
        cluster.published = dict(self.ports)
        event = "upgrade" if upgrade else "install"
        for hook in hooks_of(objects, f"pre-{event}"):
            self._hook(hook)
        for obj in objects:
            if not is_hook(obj):
                annotations = obj["metadata"].setdefault("annotations", {})  # what helm adds when it applies
                annotations.update(
                    {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE}
                )
                cluster.apply(obj, NAMESPACE)
        threads = []
        for obj in objects:
            if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet") and not is_hook(obj):
                threads.append(threading.Thread(target=self._start, args=(obj,), daemon=True))
            elif obj["kind"] == "Job" and not is_hook(obj):
                threads.append(threading.Thread(target=self._job, args=(obj,), daemon=True))
        for thread in threads:
            thread.start()
        if not cluster.prober.is_alive():
            cluster.prober.start()
        for hook in hooks_of(objects, f"post-{event}"):
            self._hook(hook)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for thread in threads:
            thread.join(max(1.0, deadline - time.monotonic()))
        failed = [name for name, ok in self.job_results.items() if not ok]
        if failed:
            print(self.log.read_text()[-3000:])
            raise SystemExit(f"e2e: Jobs failed: {failed} (log: {self.log})")
        waiting = cluster.wait_ready(READY_TIMEOUT_SECONDS)
        if waiting:
            for pod in waiting:
                print(f"--- {pod.name} (not Ready) {pod.error}\n{cluster.logs(pod)}")
            raise SystemExit(
                f"e2e: not Ready after {READY_TIMEOUT_SECONDS} s: {', '.join(p.name for p in waiting)}"
            )
        tests = [o for o in hooks_of(objects, "test") if o["kind"] == "Pod"]
        for test in tests:
            job = {
                "kind": "Job",
                "metadata": test["metadata"],
                "spec": {"backoffLimit": 0, "template": {"metadata": test["metadata"], "spec": test["spec"]}},
            }
            ok = cluster.run_job(job, NAMESPACE, self.log)
            verdict = "passed" if ok else f"FAILED (see {self.log})"
            print(f"e2e: helm test {test['metadata']['name']}: {verdict}")
            if not ok:
                raise SystemExit(f"e2e: helm test {test['metadata']['name']} failed")
        restarts = {p.name: cluster.restart_count(p) for p in cluster.pods.values()}
        return f"{len(cluster.pods)} pods Ready, {len(tests)} helm tests passed, restarts {restarts}"

    def _start(self, obj: Obj) -> None:
        pod = self.cluster.start_workload(obj, NAMESPACE)
        state = f"FAILED: {pod.error}" if pod.error else "started"
        print(f"e2e: pod {pod.namespace}/{pod.name} {state}", flush=True)

    def _job(self, obj: Obj) -> None:
        """A Job: run once; on an upgrade a Job of the same name whose pod template changed is
        what the API server refuses (spec.template is immutable), so the upgrade would fail."""
        name = obj["metadata"]["name"]
        template = json.dumps(obj["spec"]["template"], sort_keys=True)
        if name in self.job_templates:
            if self.job_templates[name] != template:
                self.job_results[name] = False
                with self.log.open("a") as out:
                    out.write(
                        f"--- {name}: field is immutable: the upgrade changes an existing Job's template\n"
                    )
            return
        self.job_templates[name] = template
        started = time.monotonic()
        ok = self.cluster.run_job(obj, NAMESPACE, self.log)
        self.job_results[name] = ok
        verdict = "succeeded" if ok else "FAILED"
        print(f"e2e: Job {name}: {verdict} in {time.monotonic() - started:.0f} s", flush=True)

    def _hook(self, obj: Obj) -> None:
        if obj["kind"] == "Job":
            started = time.monotonic()
            ok = self.cluster.run_job(obj, NAMESPACE, self.log)
            verdict = "succeeded" if ok else "FAILED"
            print(f"e2e: hook Job {obj['metadata']['name']}: {verdict} in {time.monotonic() - started:.0f} s")
            if not ok:
                print(self.log.read_text()[-3000:])
                raise SystemExit(f"e2e: hook {obj['metadata']['name']} failed (log: {self.log})")
        else:
            self.cluster.apply(obj, NAMESPACE)

    # -- the build through the chart ----------------------------------------------------------

    def admin_token(self) -> str:
        assert self.api is not None
        secret = self.api.secrets.get((NAMESPACE, f"{RELEASE}-buildfarm-admin-token"))
        if secret is None:
            raise SystemExit("e2e: the bootstrap Job stored no admin token Secret")
        return base64.b64decode(secret["data"]["token"]).decode()

    def cli(self, *args: str, timeout: float = 120) -> str:
        env = {
            **os.environ,
            "BUILDFARM_URL": f"http://127.0.0.1:{self.ports[(NAMESPACE, f'{RELEASE}-buildfarm-api')]}",
            "BUILDFARM_TOKEN": self.admin_token(),
        }
        bf = str(REPO / ".venv" / "bin" / "buildfarm")
        done = subprocess.run(
            [bf, "--output", "json", *args],
            env=env,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"e2e: buildfarm {' '.join(args)} failed: {(done.stdout + done.stderr)[-3000:]}")
        return done.stdout

    def submit(self, manifest: str) -> int:
        started = time.monotonic()
        out = json.loads(
            self.cli(
                "build", "submit", str(REPO / "examples" / manifest), "--wait", timeout=BUILD_TIMEOUT_SECONDS
            )
        )
        build_id = int(out["id"])
        print(f"e2e: {manifest}: build {build_id} {out.get('state')} in {time.monotonic() - started:.0f} s")
        self.build_ids.append(build_id)
        return build_id

    def build(self) -> str:
        """The example packages through the API container; every package read back by apt."""
        build_id = self.submit("buildfarm.yaml")
        verified = self.verify_apt(build_id)
        return f"build {build_id} succeeded; apt got {verified} byte-identical packages through Pulp content"

    def image(self) -> str:
        """The example with an image step: kaniko's pod (its stand-in) pushes to the registry."""
        build_id = self.submit("with-image.yaml")
        return f"build {build_id} succeeded (image step pushed to the registry container)"

    def verify_apt(self, build_id: int) -> int:
        """apt on the host, through Pulp content's published port (as an outside user), every .deb."""
        from buildfarm.local.aptclient import AptClient

        shown = json.loads(self.cli("build", "show", str(build_id)))
        expected = {
            o["filename"]: o["sha256"]
            for step in shown.get("steps", [])
            for o in step.get("outputs") or []
            if o["filename"].endswith(".deb")
        }
        source = json.loads(self.cli("repo", "sources", "examples", "main", "--build", str(build_id)))
        outside = f"http://127.0.0.1:{self.ports[(NAMESPACE, f'{RELEASE}-buildfarm-pulp-content')]}"
        inside = source["url"].split("/pulp/content/")[0]
        line = source["line"].replace(inside, outside)
        key = None
        if source.get("signed_by"):
            key = json.loads(self.cli("repo", "key")).get("key")
        print(f"e2e: apt line (outside): {line}")
        apt = AptClient(self.state / "apt", line, key)
        apt.update()
        for filename, sha256 in sorted(expected.items()):
            package = filename.split("_")[0]
            got = apt.download(package)
            digest = hashlib.sha256(got.read_bytes()).hexdigest()
            if got.name != filename or digest != sha256:
                raise SystemExit(
                    f"e2e: apt downloaded {got.name} sha256 {digest}, the build made {filename} {sha256}"
                )
        if not expected:
            raise SystemExit(f"e2e: build {build_id} shows no .deb outputs: {json.dumps(shown)[:500]}")
        return len(expected)

    def upgrade(self) -> str:
        """helm upgrade with a changed value: the farm's pods restart, data and Secrets stay."""
        before = {
            k: json.dumps(v.get("data"), sort_keys=True) for k, v in self.cluster.objects.secrets.items()
        }
        objects = helm_render(self.chart, self.kubeconfig, ["--set", "farm.heartbeatSeconds=6"], upgrade=True)
        pods_before = set(self.cluster.pods)
        summary = self.install(objects, upgrade=True)
        after = {
            k: json.dumps(v.get("data"), sort_keys=True) for k, v in self.cluster.objects.secrets.items()
        }
        changed = sorted(k[1] for k in before if before[k] != after.get(k))
        if changed:
            raise SystemExit(f"e2e: the upgrade changed Secrets {changed}")
        recreated = sorted(k[1] for k in pods_before - set(self.cluster.pods))
        builds = json.loads(self.cli("build", "list"))
        listed = {b["id"] for b in (builds if isinstance(builds, list) else builds.get("items", []))}
        missing = [b for b in self.build_ids if b not in listed]
        if missing:
            raise SystemExit(f"e2e: builds {missing} are gone after the upgrade")
        verified = self.verify_apt(self.build_ids[0]) if self.build_ids else 0
        return f"{summary}; recreated {recreated}; Secrets kept; builds kept; apt {verified} packages again"

    def teardown(self) -> None:
        if self.api is not None:
            self.api.server.shutdown()
        if not self.keep:
            self.cluster.teardown()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=images.cache_root() / "run")
    parser.add_argument("--keep", action="store_true", help="leave the containers running at the end")
    parser.add_argument(
        "--chart", type=Path, help="another copy of charts/buildfarm (default: this repository's)"
    )
    parser.add_argument("--skip-build", action="store_true", help="stop after every component is Ready")
    args = parser.parse_args(argv)
    phases = Phases()
    E2E(args.state, keep=False).cluster.teardown()  # what a previous run left
    shutil.rmtree(args.state, ignore_errors=True)
    args.state.mkdir(parents=True)
    e2e = E2E(args.state, args.keep)
    if args.chart:
        e2e.chart = args.chart.resolve()
    try:
        phases.run("images", lambda: f"{len(images.build_all())} images")
        rendered: list[Obj] = []

        def render() -> str:
            e2e.start_api()
            rendered.extend(helm_render(e2e.chart, e2e.kubeconfig, [], False))
            return f"{len(rendered)} objects"

        phases.run("render", render)
        phases.run("install", lambda: e2e.install(rendered, upgrade=False))
        if not args.skip_build:
            phases.run("build", e2e.build)
            phases.run("upgrade", e2e.upgrade)
            phases.run("image", e2e.image)
    finally:
        e2e.teardown()
        phases.report()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
