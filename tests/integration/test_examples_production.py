"""The example manifest on the production path end to end: builder pods (through the Kubernetes
API double, tests/integration/kubekit.py), the S3 artifact store (moto's server) and the Pulp
repository (the session's real pulpcore + pulp_deb).

Each step's pod installs its Build-Depends built earlier in the same build from the build's
staging distribution in Pulp; the build publishes through Pulp, and a real ``apt-get update`` +
``apt-get download`` against ``<content origin>/pulp/content/examples/main/latest/`` gets packages
byte-identical to what the steps stored in S3 (issue 4's first acceptance line, on issue 6's
runner).  ``apt-get source`` of the quilt example through the same distribution gets the source
package the step built, and its upstream tarball (a build input) is in Pulp's file repository of
build inputs, labelled to be kept forever (issue 12).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pulp_glue.file.context import PulpFileContentContext, PulpFileRepositoryContext

from buildfarm.backends.pulp import PulpRepository
from buildfarm.backends.pulp.inputs import INPUTS_REPOSITORY
from buildfarm.backends.pulp.mirrors import CLASS_LABEL, MIRROR_CLASS
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.local import aptverify
from buildfarm.local.aptclient import AptClient
from buildfarm.model.manifest import load_manifest
from buildfarm.runners.kubernetes import KubernetesRunner
from buildfarm.state.models import Step
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


def test_example_manifest_through_builder_pods_pulp_and_s3(ctx: FarmContext, tmp_path: Path) -> None:
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

    # The quilt example's source package, as its step built it, through the deb-src line.
    with ctx.db.session() as session:
        bundle = session.query(Step.source_sha256).filter_by(build_id=build_id, name="greet-quilt").scalar()
    ctx.store.fetch(bundle, tmp_path / "greet-quilt.tar.gz")
    with tarfile.open(tmp_path / "greet-quilt.tar.gz") as tar:
        tar.extractall(tmp_path / "built", filter="data")
    line = ctx.repo.sources("examples", "e2e").source_line()
    assert line is not None
    key = ctx.repo.signing_key()
    assert key is not None
    apt = AptClient(tmp_path / "apt-source", line, key.public_key)
    apt.update()
    fetched = {p.name: p.read_bytes() for p in apt.source("greet-quilt")}
    built = {p.name: p.read_bytes() for p in (tmp_path / "built").iterdir()}
    assert fetched == built and "greet-quilt_1.0.orig.tar.gz" in fetched
    # Its upstream tarball is a build input: in Pulp's file repository of them, kept forever.
    repo = ctx.repo
    assert isinstance(repo, PulpRepository)
    record = PulpFileRepositoryContext(repo.ctx).show(repo.inputs.repository())
    assert record["name"] == INPUTS_REPOSITORY
    assert record["pulp_labels"][CLASS_LABEL] == MIRROR_CLASS
    held = {
        entity["relative_path"].split("/", 1)[1]
        for entity in PulpFileContentContext(repo.ctx).list_iterator(
            parameters={"repository_version": record["latest_version_href"]}
        )
    }
    assert "greet-quilt_1.0.orig.tar.gz" in held
