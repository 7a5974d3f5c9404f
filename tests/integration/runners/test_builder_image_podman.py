"""The chart's default package image on a real container runtime (issue 15 part 5).

``buildfarm env image`` makes the package-builder image of the real environment (mmdebstrap,
once per machine: the environment cache) with buildah and pushes it to a real docker-registry;
podman pulls it from there by the digest the Kubernetes runner resolves ``current`` to, and runs
the package step's container of the Job that runner makes, translated as make e2e's kubelet does
(``ops/e2e/pods.py``: env, command, volumes, security context), with runc.  The step fetches its
source from S3 (moto) and uploads what it built; the test opens the uploaded ``.deb``.

Not modelled (make e2e's cluster does or a real one would): the builder namespace's network (the
container uses the host's, so it reaches moto on 127.0.0.1), pulling with the registry Secret
(this registry has no auth), scheduling.  Cost: ~2 min at load 8 on 2 cores once the machine's
environment cache holds the builder environment (buildah commit and push of a ~580 MiB layer,
podman pull, one build; 41 s user + 26 s system CPU), ~4 min the first time (mmdebstrap).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.model.images import registry_host
from buildfarm.model.settings import load_settings
from buildfarm.model.sources import pack_tree
from buildfarm.runners.base import StepJob
from buildfarm.runners.kubernetes import KubernetesRunner, upload_key
from buildfarm.runners.outputs import unpack_outputs
from buildfarm.wiring import make_store

from debpkgs import make_package
from registrykit import running_registry
from s3kit import running_moto_s3

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "ops" / "e2e"))

import pods  # noqa: E402  (make e2e's pod-spec translation, not a package)

pytestmark = [pytest.mark.integration, pytest.mark.sbuild]

PODMAN_TIMEOUT_SECONDS = 900


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[list[str]]:
    """podman with storage of the test's own (its runroot must be short: podman refuses > 50
    characters), removed at the end: a pulled image is ~600 MiB."""
    with tempfile.TemporaryDirectory(prefix="bfpm-", dir="/tmp") as run:
        command = _podman(tmp_path / "podman", Path(run))
        try:
            yield command
        finally:
            subprocess.run(
                [*command, "system", "reset", "--force"], capture_output=True, timeout=300, check=False
            )


def _podman(storage: Path, run: Path) -> list[str]:
    return [
        "podman",
        "--root",
        str(storage),
        "--runroot",
        str(run),
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]


def test_env_image_pushes_the_image_builder_pods_run(tmp_path: Path, podman: list[str]) -> None:
    (tmp_path / "moto").mkdir()
    with running_registry(tmp_path / "registry") as registry, running_moto_s3(tmp_path / "moto") as moto:
        image = f"{registry_host(registry.url)}/buildfarm/package-builder:current"
        farm = {
            "BUILDFARM_STATE_DIR": str(tmp_path / "state"),
            "BUILDFARM_RUNNER": "kubernetes",
            "BUILDFARM_REGISTRY_URL": registry.url,
            "BUILDFARM_BUILDER_IMAGE": image,  # the chart's default builders.packageImage
        }
        made = subprocess.run(
            [sys.executable, "-m", "buildfarm_cli", "env", "image", "--output", "json"],
            env={k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")} | farm,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        assert made.returncode == 0, made.stderr[-2000:]
        pushed = json.loads(made.stdout)["image"]

        settings = load_settings(
            state_dir=tmp_path / "state",
            runner="kubernetes",
            registry_url=registry.url,
            builder_image=image,
            **moto.settings(),
        )
        store = make_store(settings)
        runner = KubernetesRunner(settings.builders, settings.registry, store)  # type: ignore[arg-type]
        assert runner.builder_image() == pushed  # the moving tag, resolved to the pushed digest

        src = tmp_path / "src"
        tarball = tmp_path / "podpkg.tar.gz"
        tarball.write_bytes(pack_tree(make_package(src, "podpkg", build="echo building podpkg")))
        job = StepJob(
            build_id=1,
            step_name="podpkg",
            attempt=1,
            source_tarball=tarball,
            workdir=tmp_path / "work",
            extra_sources=[],
            log=lambda _line: None,
            source_sha256=store.put_file(tarball).sha256,
            environment_id=runner.environment_id(),
        )
        spec = runner.manifest(job)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["image"] == pushed

        pulled = subprocess.run(
            [*podman, "pull", "--quiet", "--tls-verify=false", pushed],
            capture_output=True,
            text=True,
            timeout=PODMAN_TIMEOUT_SECONDS,
            check=False,
        )
        assert pulled.returncode == 0, pulled.stderr[-2000:]
        ctx = pods.PodContext(
            namespace="builders",
            name="podpkg",
            node="node1",
            root=tmp_path / "pod",
            claims=tmp_path / "claims",
            objects=pods.Objects(),
        )
        ctx.root.mkdir()
        try:
            volumes = pods.prepare_volumes(spec, ctx, (spec.get("securityContext") or {}).get("fsGroup"))
            args, env = pods.run_args(podman, spec, container, ctx, volumes)
            entry, argv = pods.command_line(container, env)
            ran = _run(podman, args, entry, container["image"], argv)
        finally:  # emptyDirs with a sizeLimit are tmpfs mounts, as on a node
            for mount in (ctx.root / "volumes").glob("*"):
                subprocess.run(["umount", str(mount)], capture_output=True, check=False)
        assert ran.returncode == 0, (ran.stdout + ran.stderr)[-3000:]

        uploaded = tmp_path / "outputs.tar.gz"  # what the runner reads back, as it reads it
        store.fetch_key(upload_key(1, "podpkg", 1), uploaded)
        outcome = unpack_outputs(uploaded, tmp_path / "outputs")
        assert outcome.ok, outcome.error
        (deb,) = (p for p in outcome.files if p.name.endswith(".deb"))
        fields = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Package"], capture_output=True, text=True, check=True
        )
        assert fields.stdout.strip() == "podpkg"


def _run(
    podman: list[str], args: list[str], entry: list[str], image: str, argv: list[str]
) -> subprocess.CompletedProcess[str]:
    """The container as make e2e's kubelet runs it (runc, the ulimits the machine allows)."""
    return subprocess.run(
        [
            *podman,
            "run",
            "--rm",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            "host",  # moto listens on the host's 127.0.0.1
            *args,
            *entry,
            image,
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=PODMAN_TIMEOUT_SECONDS,
        check=False,
    )


def test_a_containers_environment_goes_in_a_file_only_its_user_reads(tmp_path: Path) -> None:
    """``make e2e`` passes database and S3 passwords to its containers: never on podman's command
    line, which every user of the host sees."""
    env = {"BUILDFARM_DATABASE_URL": "postgresql+psycopg://bf:s3cret@db/bf", "EMPTY": "", "EQ": "a=b"}
    args = pods.env_args(env, tmp_path / "env-farm")
    assert args == ["--env-file", str(tmp_path / "env-farm")]
    assert not any("s3cret" in arg for arg in args)
    assert (tmp_path / "env-farm").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "env-farm").read_text().splitlines() == [
        "BUILDFARM_DATABASE_URL=postgresql+psycopg://bf:s3cret@db/bf",
        "EMPTY=",
        "EQ=a=b",
    ]
    with pytest.raises(pods.PodError, match=r"^env CA: a value of more than one line"):
        pods.env_args({"CA": "-----BEGIN\nx\n-----END", "A": "1"}, tmp_path / "env-other")
