"""The example manifest on the production path end to end: builder pods (through the Kubernetes
API double, tests/integration/kubekit.py), the S3 artifact store (moto's server) and the Pulp
repository (the session's real pulpcore + pulp_deb).

Each step's pod installs its Build-Depends built earlier in the same build from the build's
staging distribution in Pulp; the build publishes through Pulp, and a real ``apt-get update`` +
``apt-get download`` against ``<content origin>/pulp/content/examples/main/latest/`` gets packages
byte-identical to what the steps stored in S3 (issue 4's first acceptance line, on issue 6's
runner).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.local import aptverify
from buildfarm.model.manifest import load_manifest
from buildfarm.runners.kubernetes import KubernetesRunner
from buildfarm.wiring import check_backends, make_repository, make_store

from farmkit import drain, make_test_context
from kubekit import FakeCluster, fake_cluster
from pulpkit import PulpServer, pulp_server  # noqa: F401 - the session's Pulp stack
from s3kit import MotoS3, running_moto_s3

REPO = Path(__file__).parents[2]


@pytest.fixture
def ctx(tmp_path: Path, pulp_server: PulpServer) -> Iterator[FarmContext]:  # noqa: F811
    (tmp_path / "moto").mkdir()
    with (
        running_moto_s3(tmp_path / "moto") as moto,
        fake_cluster(tmp_path / "cluster") as cluster,
    ):
        context = _context(tmp_path, moto, cluster, pulp_server)
        yield context
        context.db.dispose()


def _context(tmp_path: Path, moto: MotoS3, cluster: FakeCluster, pulp: PulpServer) -> FarmContext:
    (tmp_path / "cluster").mkdir(exist_ok=True)
    settings = {
        "runner": "kubernetes",
        "kubeconfig": cluster.kubeconfig(tmp_path / "kubeconfig"),
        "builder_namespace": "builders",
        "builder_image": "buildfarm/package-builder:test",
        **moto.settings(),
        **pulp.settings(signed=True),  # production as it should run: signed publications
    }
    context = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", **settings)
    check_backends(context.settings)
    context.store = make_store(context.settings)
    context.repo = make_repository(context.settings)
    runner = context.runner
    assert isinstance(runner, KubernetesRunner)
    runner.poll_seconds = 0.1
    return context


def test_example_manifest_through_builder_pods_pulp_and_s3(ctx: FarmContext) -> None:
    # its own branch: the session's Pulp is shared with other test modules
    manifest = load_manifest(REPO / "examples" / "buildfarm.yaml").model_copy(update={"branch": "e2e"})
    build_id = submit_build(ctx, manifest, REPO / "examples", "alice")
    drain(ctx)
    view = control.show_build(ctx, build_id)
    assert view.state == "succeeded", [(s.name, s.state, s.error) for s in view.steps]
    assert view.published and "/pulp/content/examples/e2e/" in view.published
    assert view.published.startswith("deb [signed-by=/etc/apt/keyrings/buildfarm.asc] ")
    # greet-cli Build-Depends on libgreet-dev, built earlier in this build: it came from Pulp staging
    greet_cli = next(s for s in view.steps if s.name == "greet-cli")
    assert greet_cli.state == "succeeded" and not greet_cli.reused_from
    verified = aptverify.verify(ctx, "examples", "e2e")  # apt with only Pulp's signing key
    expected = {o["filename"] for s in view.steps for o in s.outputs if o["filename"].endswith(".deb")}
    assert {v.filename for v in verified} == expected
    assert all(v.identical for v in verified), [v for v in verified if not v.identical]
    assert ctx.repo.sources("examples", "e2e").url.endswith("/pulp/content/examples/e2e/latest/")
    assert f"/examples/e2e/{build_id}/" in ctx.repo.sources("examples", "e2e", build_id).url
