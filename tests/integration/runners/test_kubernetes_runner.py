"""The kubernetes runner against an API test double (there is no API server here: kubekit).

The real ``kubernetes`` client talks HTTP to the double through a kubeconfig; the double plays
the Job controller and the kubelet, running each pod's own command locally, so the example
build's outputs really flow: buildfarm-step downloads the source through its presigned URL from
moto's S3 server, installs Build-Depends with apt from the build's staging repository (served
over HTTP), runs dpkg-buildpackage and PUTs its archive; the worker checks it and stores each
output content-addressed.  Image steps run the same way: the kaniko pod's init container
(buildfarm-step fetch-context) fetches the context through its plain-HTTP presigned URL,
checks it and unpacks it into the pod's emptyDir, where the image-builder stand-in reads it and
pushes a one-layer image of it to a real docker-registry.  Every Job the code sends is
validated strictly against the Kubernetes 1.29 and 1.37 schemas.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
from sqlalchemy import select, update

from buildfarm.backends.base import AptSource
from buildfarm.backends.httpserve import make_server
from buildfarm.backends.registry import RegistryClient
from buildfarm.engine import control, reaper
from buildfarm.engine.advance import advance_build
from buildfarm.engine.builders import reap_builders
from buildfarm.engine.context import FarmContext
from buildfarm.engine.steps import log_key_for, run_step
from buildfarm.engine.submit import submit_build
from buildfarm.model.errors import PermanentError
from buildfarm.model.manifest import load_manifest
from buildfarm.model.settings import load_settings
from buildfarm.model.sources import pack_tree
from buildfarm.runners import kubespecs
from buildfarm.runners.base import ImageSpec, StepJob, StepResult
from buildfarm.runners.kubernetes import KubernetesRunner, killed_by, resume_line
from buildfarm.state.models import Step, StepState, utcnow
from buildfarm.wiring import make_runner, make_store

from debpkgs import make_package, write_manifest
from farmkit import dispatcher, drain, make_test_context
from helpers import free_port, wait_until
from kubekit import FakeCluster, fake_cluster
from registrykit import Registry, running_registry
from s3kit import MotoS3, running_moto_s3

REPO = Path(__file__).parents[3]
NAMESPACE = "builders"
SCHEMA_VERSIONS = ("1.29.0", "1.37.0")
"""The oldest and newest Kubernetes versions the chart supports."""


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with running_moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeCluster]:
    with fake_cluster(tmp_path / "cluster") as fake:
        (tmp_path / "cluster").mkdir(exist_ok=True)
        yield fake


@pytest.fixture
def ctx(tmp_path: Path, moto: MotoS3, cluster: FakeCluster) -> Iterator[FarmContext]:
    port = free_port()
    settings = {
        "runner": "kubernetes",
        **moto.settings(),
        "kubeconfig": cluster.kubeconfig(tmp_path / "kubeconfig"),
        "builder_namespace": NAMESPACE,
        "builder_image": "buildfarm/package-builder:test",
        "node": "node1",
        "builder_pin_to_node": True,  # as the chart sets it for a DaemonSet of workers
        "repo_port": port,
    }
    context = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", **settings)
    context.store = make_store(context.settings)
    runner = context.runner
    assert isinstance(runner, KubernetesRunner)
    runner.poll_seconds = 0.1
    repos = make_server(context.settings.state_dir / "repos", port=port)  # staging repos over HTTP
    threading.Thread(target=repos.serve_forever, daemon=True).start()
    yield context
    repos.shutdown()
    repos.server_close()
    context.db.dispose()


def _validate(bodies: list[dict[str, Any]]) -> None:
    assert bodies
    for body in bodies:
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(body, version, strict=True)


def _pod_security(body: dict[str, Any]) -> dict[str, Any]:
    pod = body["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert all("hostPath" not in v for v in pod["volumes"])
    (container,) = pod["containers"]
    for each in [*pod.get("initContainers", []), container]:
        security = each["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert security.get("capabilities", {}).get("drop", ["ALL"]) == ["ALL"]
        assert each["resources"]["limits"] and each["resources"]["requests"]
    assert body["spec"]["backoffLimit"] == 0
    return pod


def _step(ctx: FarmContext, build_id: int, name: str) -> Step:
    with ctx.db.session() as session:
        step = session.scalars(select(Step).where(Step.build_id == build_id, Step.name == name)).one()
        session.expunge(step)
        return step


def test_example_build_runs_in_builder_pods(ctx: FarmContext, moto: MotoS3, cluster: FakeCluster) -> None:
    build_id = submit_build(
        ctx, load_manifest(REPO / "examples" / "buildfarm.yaml"), REPO / "examples", "alice"
    )
    drain(ctx)
    view = control.show_build(ctx, build_id)
    assert view.state == "succeeded", [(s.name, s.state, s.error) for s in view.steps]
    assert len(view.steps) == 6  # examples/: five native packages and greet-quilt (3.0 quilt)
    objects = moto.object_names(ctx.settings.storage.s3_bucket, "sha256/")
    for step in view.steps:
        assert any(o["filename"].endswith(".deb") for o in step.outputs)
        for output in step.outputs:
            assert f"sha256/{output['sha256'][:2]}/{output['sha256']}" in objects
    # greet-cli's Build-Depends (libgreet-dev, built earlier in this build) came from staging by apt
    log, _ = ctx.store.read_log(log_key_for(build_id, "greet-cli", 1))
    assert b"libgreet-dev" in log and b"dpkg-buildpackage" in log
    assert b"buildfarm: following pod bf-" in log
    # one Job per step, each sent once, each valid for the oldest and newest Kubernetes, then deleted
    assert cluster.posts() == len(view.steps)
    _validate(cluster.created)
    for body in cluster.created:
        pod = _pod_security(body)
        term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node1"]
        labels = body["metadata"]["labels"]
        assert labels["buildfarm.io/build-id"] == str(build_id)
        assert labels["buildfarm.io/project"] == "examples" or labels["buildfarm.io/project"] == ""
    assert cluster.job_names(NAMESPACE) == [] and cluster.pod_names(NAMESPACE) == []
    assert moto.object_names(ctx.settings.storage.s3_bucket, "uploads/") == []  # upload slots removed


def _one_package(ctx: FarmContext, tmp_path: Path, name: str) -> tuple[int, int]:
    src = tmp_path / "src"
    make_package(src, name, build=f"echo building {name}")
    build_id = submit_build(ctx, load_manifest(write_manifest(src, [name])), src, "alice")
    rec = dispatcher(ctx)
    while rec.advances:
        advance_build(ctx, rec.advances.pop(0))
    step_id, _ = rec.runs.pop(0)
    return build_id, step_id


def _start_run(ctx: FarmContext, step_id: int, node: str = "node1") -> tuple[threading.Thread, list[str]]:
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(run_step(ctx, step_id, node)), daemon=True)
    thread.start()
    return thread, outcome


def test_redelivered_message_follows_the_existing_job(
    ctx: FarmContext, cluster: FakeCluster, tmp_path: Path
) -> None:
    build_id, step_id = _one_package(ctx, tmp_path, "adopt-me")
    cluster.gate.clear()  # the pod is scheduled but its container does not start yet
    first, outcome = _start_run(ctx, step_id)
    wait_until(lambda: cluster.job_names(NAMESPACE), 20, "the Job")
    # a duplicate delivery while the first worker follows the pod: no claim, no second Job
    assert run_step(ctx, step_id, "node2") == "not-claimed"
    assert cluster.posts() == 1
    cluster.gate.set()
    first.join(60)
    assert outcome == ["succeeded"]

    # A worker that dies mid-build: its Job runs on, its lease expires, the reaper sends the
    # step again; the new delivery adopts attempt 1 and resumes the log where the store ends.
    build_id, step_id = _one_package(ctx, tmp_path / "second", "adopt-again")
    cluster.gate.clear()
    from buildfarm.engine.steps import claim_step

    claim = claim_step(ctx, step_id, "node1")
    assert claim is not None and claim.attempt == 1
    job = StepJob(
        build_id, claim.name, 1, Path("unused"), tmp_path, [], print, source_sha256=claim.source_sha256
    )
    runner = ctx.runner
    assert isinstance(runner, KubernetesRunner)
    assert runner.api.create_job(runner.manifest(job))
    (pod,) = cluster.pod_names(NAMESPACE)
    cluster.gate.set()
    wait_until(lambda: len(cluster.pod_log(NAMESPACE, pod)) >= 3, 30, "the pod's first lines")
    first_lines = cluster.pod_log(NAMESPACE, pod)[:2]
    writer = ctx.store.open_log(claim.log_key)  # what the dead worker had flushed
    writer.write_line(f"buildfarm: following pod {pod} from log line 0")
    for line in first_lines:
        writer.write_line(line)
    writer.close()
    with ctx.db.session() as session:
        session.execute(update(Step).where(Step.id == step_id).values(lease_expires_at=utcnow()))
    wait_until(lambda: reaper.reap(ctx).expired, 10, "the reaper to take the lease back")
    assert _step(ctx, build_id, "adopt-again").state == StepState.READY
    dispatcher(ctx).runs.clear()
    assert run_step(ctx, step_id, "node2") == "succeeded"
    step = _step(ctx, build_id, "adopt-again")
    assert step.attempt == 1 and step.node == "node2"
    assert cluster.posts() == 2  # one Job per step, none for the redelivery
    stored, _ = ctx.store.read_log(claim.log_key)
    text = stored.decode()
    assert "adopts attempt 1" in text
    stored_pod_lines = [
        line for line in text.split("\n", 1)[1].splitlines() if not line.startswith("buildfarm: ")
    ]
    # resumed where the store ended: every pod line once, in order, nothing lost, nothing twice
    assert stored_pod_lines == cluster.pod_log(NAMESPACE, pod)


def test_vanished_pod_sends_the_step_back_to_ready(
    ctx: FarmContext, cluster: FakeCluster, tmp_path: Path
) -> None:
    build_id, step_id = _one_package(ctx, tmp_path, "vanishing")
    cluster.gate.clear()
    thread, outcome = _start_run(ctx, step_id)
    wait_until(lambda: cluster.job_names(NAMESPACE), 20, "the Job")
    (name,) = cluster.job_names(NAMESPACE)
    wait_until(lambda: "buildfarm: following" in _log_text(ctx, build_id, "vanishing"), 20, "following")
    cluster.delete_job(NAMESPACE, name)  # e.g. the namespace cleaned by hand, a node drained
    thread.join(30)
    assert outcome == ["pod-lost"]
    step = _step(ctx, build_id, "vanishing")
    assert step.state == StepState.READY and "vanished" in (step.error or "")
    assert (step_id, 2) in dispatcher(ctx).runs
    cluster.gate.set()


def _log_text(ctx: FarmContext, build_id: int, name: str) -> str:
    try:
        return ctx.store.read_log(log_key_for(build_id, name, 1))[0].decode()
    except Exception:
        return ""


def test_cancel_deletes_the_pod(ctx: FarmContext, cluster: FakeCluster, tmp_path: Path) -> None:
    build_id, step_id = _one_package(ctx, tmp_path, "cancel-me")
    cluster.gate.clear()
    thread, outcome = _start_run(ctx, step_id)
    wait_until(lambda: cluster.pod_names(NAMESPACE), 20, "the pod")
    (name,) = cluster.job_names(NAMESPACE)
    control.cancel_build(ctx, build_id)
    thread.join(30)
    assert outcome == ["lease-lost"]
    assert cluster.job_names(NAMESPACE) == [] and cluster.pod_names(NAMESPACE) == []
    assert ("DELETE", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}") in cluster.requests
    cluster.gate.set()


def test_reaper_removes_orphans_and_nothing_else(
    ctx: FarmContext, cluster: FakeCluster, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    for name in ("running", "finished", "superseded", "silent"):
        make_package(src, name)
    build_id = submit_build(
        ctx, load_manifest(write_manifest(src, ["running", "finished", "superseded", "silent"])), src, "al"
    )
    long_ago = utcnow().replace(year=2020)
    with ctx.db.session() as session:
        values = {
            "running": dict(state=StepState.RUNNING, attempt=1, lease_expires_at=utcnow().replace(year=2999)),
            "finished": dict(state=StepState.SUCCEEDED, attempt=1),
            "superseded": dict(
                state=StepState.RUNNING, attempt=2, lease_expires_at=utcnow().replace(year=2999)
            ),
            "silent": dict(
                state=StepState.RUNNING, attempt=1, lease_expires_at=long_ago, lease_owner="gone/1"
            ),
        }
        for name, changes in values.items():
            session.execute(
                update(Step)
                .where(Step.build_id == build_id, Step.name == name)
                .values(started_at=long_ago, node="node1", **changes)
            )
    settings = ctx.settings

    def job_for(step: str, attempt: int, build: int = build_id) -> dict[str, Any]:
        job = StepJob(build, step, attempt, Path("x"), Path("y"), [], print, source_sha256="0" * 64)
        pods = kubespecs.PodSettings(settings.builders, settings.registry.url)
        return kubespecs.package_job(job, pods, kubespecs.StepUrls("http://s/src", "http://s/up"))

    keep = cluster.add_job(NAMESPACE, job_for("running", 1), start=False)
    cluster.add_job(NAMESPACE, job_for("finished", 1), start=False)
    cluster.add_job(NAMESPACE, job_for("superseded", 1), start=False)
    cluster.add_job(NAMESPACE, job_for("ghost", 1, build=9999), start=False)
    foreign = job_for("finished", 1)
    cluster.add_pod(
        "other-namespace",
        {
            "metadata": {"name": "theirs", "labels": foreign["metadata"]["labels"]},
            "spec": foreign["spec"]["template"]["spec"],
        },
    )
    cluster.add_pod(
        NAMESPACE, {"metadata": {"name": "unlabelled"}, "spec": foreign["spec"]["template"]["spec"]}
    )
    report = reap_builders(ctx)
    kept_name = keep["metadata"]["name"]
    assert cluster.job_names(NAMESPACE) == [kept_name]
    assert sorted(report.deleted_jobs) == sorted(
        [
            kubespecs.job_name(build_id, "finished", 1),
            kubespecs.job_name(build_id, "superseded", 1),
            kubespecs.job_name(9999, "ghost", 1),
        ]
    )
    pods = cluster.pod_names(NAMESPACE)
    assert "unlabelled" in pods and any(p.startswith(kept_name) for p in pods) and len(pods) == 2
    assert cluster.pod_names("other-namespace") == ["theirs"]
    silent = _step(ctx, build_id, "silent")
    assert report.requeued == [silent.id] and silent.state == StepState.READY
    assert _step(ctx, build_id, "running").state == StepState.RUNNING


DOCKERFILE = b"FROM scratch\nCOPY greeting /greeting\n"
STAGING = AptSource("http://pulp/staging/", "bookworm", ("main",), True)


def _context(tmp_path: Path) -> bytes:
    tree = tmp_path / "context"
    tree.mkdir()
    (tree / "Dockerfile").write_bytes(DOCKERFILE)
    (tree / "greeting").write_text("hello from the context\n")
    return pack_tree(tree)


def _image_run(
    ctx: FarmContext, tmp_path: Path, builder: str, sha256: str, *, registry_url: str | None, host: str
) -> tuple[StepResult, list[str]]:
    """Run one image step through the runner; return its result and the step log's lines."""
    settings = ctx.settings.replace(builder_runtime_class="sysbox-runc", registry_url=registry_url)
    runner = make_runner(settings, ctx.store)
    assert isinstance(runner, KubernetesRunner)
    runner.poll_seconds = 0.1
    name = f"web-{builder}"
    image = ImageSpec(name, builder=builder, destination=f"{host}/p/main/5/{name}:latest")
    work = tmp_path / f"work-{builder}-{sha256[:8]}"
    work.mkdir()
    lines: list[str] = []
    job = StepJob(
        5, f"image-{builder}", 1, Path("unused"), work, [STAGING], lines.append,
        source_sha256=sha256, kind="image", image=image,
    )  # fmt: skip
    return runner.run(job), lines


def _layer_files(registry: Registry, reference: str, digest: str, tmp_path: Path) -> dict[str, bytes]:
    client = RegistryClient(registry.url)
    repository = reference.split("/", 1)[1].rsplit(":", 1)[0]
    manifest, manifest_digest, _ = client.manifest(repository, digest)
    assert manifest_digest == digest
    (layer,) = manifest["layers"]
    client.fetch_blob(repository, layer["digest"], tmp_path / "layer")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress((tmp_path / "layer").read_bytes()))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_image_steps_fetch_their_context_in_an_init_container(
    ctx: FarmContext, cluster: FakeCluster, registry: Registry, tmp_path: Path
) -> None:
    source = ctx.store.put_bytes(_context(tmp_path))
    host = registry.url.removeprefix("http://")
    kaniko, kaniko_log = _image_run(
        ctx, tmp_path, "kaniko", source.sha256, registry_url=registry.url, host=host
    )
    assert kaniko.ok, kaniko.error
    (built,) = kaniko.images
    # The stand-in read the context only from the directory the init container unpacked (its
    # arguments hold no URL), and pushed a one-layer image of it: that layer is the context.
    assert _layer_files(registry, built.reference, built.digest, tmp_path) == {
        "Dockerfile": DOCKERFILE,
        "greeting": b"hello from the context\n",
    }
    # the size is the registry's: config + layer bytes of the pushed manifest
    repository = built.reference.split("/", 1)[1].rsplit(":", 1)[0]
    assert built.size == RegistryClient(registry.url).image_size(repository, built.digest) > 0
    assert f"buildfarm: pushed {built.reference}@{built.digest} ({built.size} bytes)" in kaniko_log
    # the init container's lines come first in the step log, then the build's
    marker = next(i for i, x in enumerate(kaniko_log) if x.startswith("buildfarm: following pod"))
    pod_lines = kaniko_log[marker + 1 :]
    assert pod_lines[0].startswith("buildfarm-step: downloading the image context from http://")
    assert f"buildfarm-step: image context sha256 {source.sha256} verified" in pod_lines[1]
    assert any(x.startswith("image-builder stand-in: pushed ") for x in pod_lines)

    # sysbox fetches its own context; the stand-in pushes nothing there, so the size cannot be
    # read: the step still succeeds, with size 0 and the reason in its log
    sysbox, sysbox_log = _image_run(
        ctx, tmp_path, "sysbox", source.sha256, registry_url=registry.url, host=host
    )
    assert sysbox.ok, sysbox.error
    assert sysbox.images[0].size == 0
    assert any("its size could not be read" in x and "recorded as 0" in x for x in sysbox_log)

    _validate(cluster.created)
    for body in cluster.created:
        pod = _pod_security(body)
        assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == [
            "buildfarm-registry-push"
        ]
        assert all("secret" in v or "emptyDir" in v for v in pod["volumes"])
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            assert all("valueFrom" not in e for e in container.get("env", []))  # no other credential
    kaniko_body, sysbox_body = cluster.created
    kaniko_pod = kaniko_body["spec"]["template"]["spec"]
    assert "runtimeClassName" not in kaniko_pod
    assert sysbox_body["spec"]["template"]["spec"]["runtimeClassName"] == "sysbox-runc"
    (fetch,) = kaniko_pod["initContainers"]
    assert fetch["image"] == ctx.settings.builders.image and fetch["args"][0] == "fetch-context"
    url = fetch["args"][fetch["args"].index("--url") + 1]
    assert url.startswith("http://") and "X-Amz-Signature" in url  # plain HTTP, as the chart's MinIO
    assert fetch["securityContext"]["readOnlyRootFilesystem"] is True
    assert "add" not in fetch["securityContext"]["capabilities"]
    [workspace] = [v for v in kaniko_pod["volumes"] if v["name"] == "workspace"]
    assert workspace["emptyDir"]["sizeLimit"] and fetch["volumeMounts"][0]["name"] == "workspace"
    args = kaniko_pod["containers"][0]["args"]
    assert "--context=dir:///workspace/context" in args and not any("http" in a for a in args[:2])
    assert f"--build-arg=BUILDFARM_APT_SOURCE={STAGING.line()}" in args
    assert "--build-arg=BUILDFARM_IMAGE_PREFIX=" + host + "/p/main/5" in args


def test_a_context_that_fails_its_check_fails_the_step_in_one_line(
    ctx: FarmContext, cluster: FakeCluster, tmp_path: Path
) -> None:
    # what the planner hashed is not what the store serves (a tampered or corrupted object)
    planned = _context(tmp_path)
    expected = hashlib.sha256(planned).hexdigest()
    ctx.store.put_object_bytes(ctx.store.object_name(expected), planned + b"tampered")
    result, log = _image_run(ctx, tmp_path, "kaniko", expected, registry_url=None, host="registry:5000")
    assert not result.ok and result.error is not None
    assert "\n" not in result.error
    assert result.error.startswith("builder pod bf-5-image-kaniko-")
    assert (
        f": init container fetch-context exited with status 2: image context sha256 mismatch: "
        f"expected {expected}, the download from http://" in result.error
    )
    assert result.error.endswith(f"has {hashlib.sha256(planned + b'tampered').hexdigest()}; nothing built")
    assert not any("image-builder stand-in" in line for line in log)  # kaniko never started
    assert any(line.startswith("buildfarm-step: error: image context sha256 mismatch") for line in log)

    # an unsafe tarball: refused before anything is written outside the context
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    unsafe = ctx.store.put_bytes(gzip.compress(raw.getvalue()))
    result, _ = _image_run(ctx, tmp_path, "kaniko", unsafe.sha256, registry_url=None, host="registry:5000")
    assert not result.ok and result.error is not None
    assert result.error.endswith(
        "init container fetch-context exited with status 2: "
        "unsafe image context: member '../escape' escapes the tree"
    )
    assert cluster.job_names(NAMESPACE) == []  # cleaned up like any finished step
    _validate(cluster.created)


def test_a_cross_build_runs_in_the_cross_image_with_its_host_architecture(
    ctx: FarmContext, cluster: FakeCluster, tmp_path: Path
) -> None:
    """A manifest's foreign architecture in builder pods: the step's key names the cross
    environment's image, and its pod runs in that image with ``--host-arch`` (and without the
    ``Architecture: all`` binaries), as the sbuild runner runs ``sbuild --host``.  The images
    cannot be pulled here: the pods fail at once, the Jobs they were sent as are what counts."""
    runner = ctx.runner
    assert isinstance(runner, KubernetesRunner)
    native = runner.native_architecture()
    foreign = "arm64" if native != "arm64" else "amd64"
    src = tmp_path / "src"
    control = make_package(src, "tool") / "debian" / "control"
    control.write_text(control.read_text().replace("Architecture: all", "Architecture: any"))
    manifest = write_manifest(src, ["tool"])
    manifest.write_text(manifest.read_text() + f"architectures: [{native}, {foreign}]\n")
    build_id = submit_build(ctx, load_manifest(manifest), src, "alice")
    image = ctx.settings.builders.image
    cross = f"{image}-cross-{foreign}"
    assert _step(ctx, build_id, f"tool:{foreign}").environment_id == f"kubernetes:{cross}"
    assert _step(ctx, build_id, "tool").environment_id is None  # the build's own environment
    cluster.unpullable |= {image, cross}
    rec = dispatcher(ctx)
    while rec.advances:
        advance_build(ctx, rec.advances.pop(0))
    for step_id, _attempt in rec.runs:
        assert run_step(ctx, step_id, "node1") == "failed"
    _validate(cluster.created)
    sent = {body["metadata"]["annotations"]["buildfarm.io/step-name"]: body for body in cluster.created}
    pods = {name: body["spec"]["template"]["spec"]["containers"][0] for name, body in sent.items()}
    assert pods[f"tool:{foreign}"]["image"] == cross
    args = pods[f"tool:{foreign}"]["args"]
    assert args[args.index("--host-arch") + 1] == foreign and "--no-arch-all" in args
    assert pods["tool"]["image"] == image
    assert "--host-arch" not in pods["tool"]["args"] and "--no-arch-all" not in pods["tool"]["args"]


def test_an_image_builder_that_cannot_be_pulled_after_the_context_fails_at_once(
    ctx: FarmContext, cluster: FakeCluster, tmp_path: Path
) -> None:
    source = ctx.store.put_bytes(_context(tmp_path))
    cluster.unpullable.add(ctx.settings.builders.image_builder_image)
    result, log = _image_run(ctx, tmp_path, "kaniko", source.sha256, registry_url=None, host="registry:5000")
    assert not result.ok and result.error is not None
    assert result.error.startswith("builder pod bf-5-image-kaniko-")
    assert result.error.endswith(
        f"cannot start: ErrImagePull: pull of {ctx.settings.builders.image_builder_image} failed"
    )
    assert any("image context sha256" in line and "verified" in line for line in log)  # the init ran
    assert cluster.job_names(NAMESPACE) == []


def test_settings_mistakes_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="needs artifacts: s3"):
        make_runner(load_settings(state_dir=tmp_path, runner="kubernetes"))
    settings = load_settings(state_dir=tmp_path, kubeconfig=tmp_path / "missing")
    from buildfarm.runners.kubernetes import make_api_client

    with pytest.raises(PermanentError, match="kubeconfig"):
        make_api_client(settings.builders)


def test_log_resume_point() -> None:
    log = b"buildfarm: step x starts\nbuildfarm: following pod p from log line 0\none\ntwo\n"
    assert resume_line(log) == 2
    log += b"buildfarm: node n adopts attempt 1\nbuildfarm: following pod p from log line 2\nthree\n"
    assert resume_line(log) == 3
    assert resume_line(b"") == 0
    assert len(kubespecs.job_name(1, "x" * 300, 99)) <= kubespecs.MAX_JOB_NAME
    assert kubespecs.job_name(1, "A_b", 1) != kubespecs.job_name(1, "a-b", 1)


def test_an_oom_killed_builder_is_reported_as_killed_not_failed() -> None:
    def pod(reason: str, init_reason: str = "Completed") -> SimpleNamespace:
        def status(name: str, why: str, code: int) -> SimpleNamespace:
            terminated = SimpleNamespace(reason=why, exit_code=code, message="")
            return SimpleNamespace(name=name, state=SimpleNamespace(terminated=terminated))

        return SimpleNamespace(
            status=SimpleNamespace(
                init_container_statuses=[
                    status("context", init_reason, 0 if init_reason == "Completed" else 137)
                ],
                container_statuses=[status("build", reason, 137)],
            )
        )

    assert killed_by(pod("OOMKilled")) == "OOMKilled"
    assert killed_by(pod("Completed", init_reason="OOMKilled")) == "OOMKilled"
    assert killed_by(pod("Error")) is None
