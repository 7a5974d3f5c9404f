"""Pulp or S3 down in the middle of a build: nothing half-published, and the build completes later.

The farm runs in-process (farmkit) on the production backends: the session's real Pulp and one
moto S3 server, each reached through a cuttable TCP proxy (tcpproxy.py).  Two kinds of outage:

* a cut proxy: connections are reset at once, as from a crashed server or a dropped route;
* a stopped process (SIGSTOP of Pulp's API or worker): connections hang, so only the farm's own
  deadlines (HTTP timeouts, ``pulp_task_timeout_seconds``) end the wait.

What is checked after each outage is what a person sees: the build's state and its one-line error
naming the service, apt installing from ``latest`` through Pulp's content app (never cut), and,
once the service is back, the build completing (by the reaper's next advance, or by ``retry``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from buildfarm.backends.pulp import PulpRepository
from buildfarm.backends.s3 import RetryPolicy, S3ArtifactStore
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.reaper import reap
from buildfarm.engine.submit import submit_build
from buildfarm.local.aptclient import AptClient, AptError
from buildfarm.model.errors import NotFoundError
from buildfarm.model.manifest import load_manifest
from buildfarm.runners.base import Runner, StepJob, StepResult
from buildfarm.state.models import Build

from debpkgs import make_package, write_manifest
from farmkit import drain, make_test_context
from pulpkit import PulpServer, pulp_server  # noqa: F401 - the session's Pulp stack
from s3kit import ACCESS_KEY, REGION, SECRET_KEY, MotoS3, running_moto_s3
from tcpproxy import TcpProxy, tcp_proxy

S3_RETRY = RetryPolicy(attempts=6, backoff=0.2, connect_timeout=2.0, read_timeout=15.0)
"""An outage of 2 refused connections (plus one stale pooled connection) takes 3 attempts; the
other 3 are slack for a slow answer of moto on a loaded machine (seen once with 4 attempts)."""
PULP_HTTP_TIMEOUT = 5.0
PULP_TASK_TIMEOUT = 3.0
"""Short deadlines, so a stopped Pulp costs the test seconds; production uses 30 s and 600 s.
Pulp's API description (fetched once per client, before the test starts) takes seconds to make
on a loaded machine, hence the HTTP timeout is the larger one."""
RECOVERY_BOUND = 60.0
"""Bound on waiting for the reaper's re-advance to complete a build once the service is back."""


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with running_moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_proxy(moto: MotoS3) -> Iterator[TcpProxy]:
    host, port = moto.endpoint.rsplit(":", 1)
    with tcp_proxy(host, int(port)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def pulp_proxy(pulp_server: PulpServer) -> Iterator[TcpProxy]:  # noqa: F811
    api = urlsplit(pulp_server.base_url)
    assert api.hostname is not None and api.port is not None
    with tcp_proxy(api.hostname, api.port) as proxy:
        yield proxy


@pytest.fixture
def ctx(
    tmp_path: Path,
    moto: MotoS3,
    s3_proxy: TcpProxy,
    pulp_proxy: TcpProxy,
    pulp_server: PulpServer,  # noqa: F811
) -> Iterator[FarmContext]:
    # A short first pause between publish attempts, so recovery takes a fraction of a second here.
    context = make_test_context(
        tmp_path, f"sqlite:///{tmp_path / 'state.db'}", repository_retry_min_seconds=0.5
    )
    context.store = S3ArtifactStore(
        s3_proxy.address,
        ACCESS_KEY,
        SECRET_KEY,
        moto.new_bucket(),
        secure=False,
        region=REGION,
        retry=S3_RETRY,
    )
    context.repo = PulpRepository(
        f"http://{pulp_proxy.address}",
        pulp_server.username,
        pulp_server.password,
        pulp_server.content_origin,
        task_timeout_seconds=PULP_TASK_TIMEOUT,
        http_timeout_seconds=PULP_HTTP_TIMEOUT,
    )
    context.repo.check()  # loads the API description while Pulp is up
    yield context
    s3_proxy.restore()
    pulp_proxy.restore()
    context.db.dispose()


class CutAfterBuild:
    """The real runner, then a service cut: what follows the build command meets the outage."""

    def __init__(self, runner: Runner, proxy: TcpProxy, step: str | None = None) -> None:
        self.runner, self.proxy, self.name, self.step = runner, proxy, runner.name, step

    def environment_id(self) -> str:
        return self.runner.environment_id()

    def run(self, job: StepJob) -> StepResult:
        result = self.runner.run(job)
        if self.step in (None, job.step_name):
            self.proxy.cut()
        return result


@contextmanager
def stopped(pulp: PulpServer, process: str) -> Iterator[None]:
    """SIGSTOP one of Pulp's processes (its whole process group: gunicorn's workers too)."""
    group = int((pulp.root / "pids" / process).read_text())
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)


def build(ctx: FarmContext, src: Path, project: str, *packages: str) -> int:
    manifest = write_manifest(src, list(packages), project=project, branch="main")
    build_id = submit_build(ctx, load_manifest(manifest), src, "outage")
    drain(ctx)
    return build_id


def latest_line(ctx: FarmContext, project: str) -> str:
    """The apt line of the branch's ``latest``, looked up while Pulp's API is reachable."""
    return ctx.repo.sources(project, "main").line()


def apt_version(tmp_path: Path, line: str, package: str) -> str:
    """The version of ``package`` apt downloads from ``line`` (served by Pulp's content app)."""
    apt = AptClient(tmp_path / f"apt-{time.monotonic_ns()}", line)
    apt.update()
    return apt.download(package).name.split("_")[1]


def settle(ctx: FarmContext, build_id: int) -> control.BuildView:
    """Play the reaper until the build is finished (bounded): what celery beat does every few seconds."""
    deadline = time.monotonic() + RECOVERY_BOUND
    while True:
        reap(ctx)
        drain(ctx)
        view = control.show_build(ctx, build_id)
        if view.state in ("succeeded", "failed") or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def assert_one_line(error: str | None, service: str) -> str:
    assert error is not None
    assert service in error and "\n" not in error and "Traceback" not in error, error
    return error


def test_s3_outage_shorter_than_the_retry_bound_is_bridged(
    ctx: FarmContext, s3_proxy: TcpProxy, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_package(src, "blip")
    before = s3_proxy.refused
    s3_proxy.cut(connections=2)  # S3 refuses the step's next two connections, then is back
    build_id = build(ctx, src, "outage-blip", "blip")
    assert s3_proxy.refused - before == 2 and not s3_proxy.is_cut
    view = control.show_build(ctx, build_id)
    assert view.state == "succeeded", view
    assert [s.attempt for s in view.steps] == [1]
    assert apt_version(tmp_path, latest_line(ctx, "outage-blip"), "blip") == "1.0"


def test_s3_down_when_a_step_starts_fails_it_in_one_line(
    ctx: FarmContext, s3_proxy: TcpProxy, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_package(src, "nostore")
    manifest = write_manifest(src, ["nostore"], project="outage-nostore", branch="main")
    build_id = submit_build(ctx, load_manifest(manifest), src, "outage")
    s3_proxy.cut()
    drain(ctx)
    view = control.show_build(ctx, build_id)
    assert view.state == "failed", view
    error = assert_one_line(view.steps[0].error, "S3")
    assert error.startswith("the step's log could not be opened: S3 bucket"), error
    assert view.published is None
    s3_proxy.restore()
    control.retry_build(ctx, build_id)
    drain(ctx)
    assert control.show_build(ctx, build_id).state == "succeeded"


def test_s3_down_while_outputs_are_stored_fails_the_step_then_retry_publishes(
    ctx: FarmContext, s3_proxy: TcpProxy, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_package(src, "s3down")
    first = build(ctx, src, "outage-s3", "s3down")
    assert control.show_build(ctx, first).state == "succeeded"
    latest = latest_line(ctx, "outage-s3")

    make_package(src, "s3down", version="2.0")
    runner = ctx.runner
    ctx.runner = CutAfterBuild(runner, s3_proxy)
    second = build(ctx, src, "outage-s3", "s3down")
    view = control.show_build(ctx, second)
    assert view.state == "failed", view
    error = assert_one_line(view.steps[0].error, "S3")
    assert "did not answer" in error and "sha256/" in error, error  # storing an output
    assert view.error == "step(s) failed: s3down; latest was not moved"
    assert view.published is None
    assert apt_version(tmp_path, latest, "s3down") == "1.0"

    s3_proxy.restore()
    ctx.runner = runner
    control.retry_build(ctx, second)
    drain(ctx)
    view = control.show_build(ctx, second)
    assert view.state == "succeeded", view
    assert view.steps[0].attempt == 2
    assert apt_version(tmp_path, latest, "s3down") == "2.0"


def test_pulp_refused_at_publish_keeps_latest_then_publishes_when_back(
    ctx: FarmContext, pulp_proxy: TcpProxy, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_package(src, "pubdown")
    assert control.show_build(ctx, build(ctx, src, "outage-pub", "pubdown")).state == "succeeded"
    latest = latest_line(ctx, "outage-pub")

    make_package(src, "pubdown", version="2.0")
    pulp_proxy.cut()
    second = build(ctx, src, "outage-pub", "pubdown")
    view = control.show_build(ctx, second)
    assert view.state == "publishing", view
    error = assert_one_line(view.error, "Pulp at")
    assert error.startswith("publishing waits (next attempt in"), error
    assert apt_version(tmp_path, latest, "pubdown") == "1.0"

    # Still down past the give-up bound: the build fails with the same line; latest stays.
    ctx.settings.repository.give_up_seconds = 0.0
    view = settle(ctx, second)
    assert view.state == "failed", view
    error = assert_one_line(view.error, "Pulp at")
    assert error.startswith("not published: Pulp at") and "retry publishes it" in error, error
    pulp_proxy.restore()
    with pytest.raises(NotFoundError):
        ctx.repo.sources("outage-pub", "main", second)
    assert apt_version(tmp_path, latest, "pubdown") == "1.0"

    control.retry_build(ctx, second)
    drain(ctx)
    view = control.show_build(ctx, second)
    assert view.state == "succeeded", view
    assert view.error is None and [s.attempt for s in view.steps] == [1]  # nothing rebuilt
    assert apt_version(tmp_path, latest, "pubdown") == "2.0"


def test_pulp_worker_stopped_at_publish_hits_the_task_deadline_then_publishes(
    ctx: FarmContext,
    pulp_server: PulpServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    make_package(src, "slowpulp")
    assert control.show_build(ctx, build(ctx, src, "outage-worker", "slowpulp")).state == "succeeded"
    latest = latest_line(ctx, "outage-worker")

    make_package(src, "slowpulp", version="2.0")
    with stopped(pulp_server, "worker"):
        second = build(ctx, src, "outage-worker", "slowpulp")
        view = control.show_build(ctx, second)
        assert view.state == "publishing", view
        error = assert_one_line(view.error, "Pulp at")
        assert "did not finish within 3s" in error, error
        assert apt_version(tmp_path, latest, "slowpulp") == "1.0"
    # The worker now runs the tasks the farm gave up on; the next attempt finds and completes them.
    view = settle(ctx, second)
    assert view.state == "succeeded", view
    assert apt_version(tmp_path, latest, "slowpulp") == "2.0"


def test_pulp_api_stopped_at_staging_holds_the_steps_then_stages(
    ctx: FarmContext,
    pulp_server: PulpServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    make_package(src, "stg-lib")
    make_package(src, "stg-tool", build_depends=("stg-lib",))
    with stopped(pulp_server, "api"):
        build_id = build(ctx, src, "outage-stage", "stg-lib", "stg-tool")
        view = control.show_build(ctx, build_id)
        assert view.state == "running", view
        assert [(s.name, s.state) for s in view.steps] == [("stg-lib", "succeeded"), ("stg-tool", "pending")]
        error = assert_one_line(view.error, "Pulp at")
        assert error.startswith("staging waits for the repository"), error
    view = settle(ctx, build_id)
    assert view.state == "succeeded", view
    assert view.error is None
    assert apt_version(tmp_path, latest_line(ctx, "outage-stage"), "stg-tool") == "1.0"


def test_pulp_down_at_staging_past_the_bound_fails_the_build_then_retry_builds(
    ctx: FarmContext, pulp_proxy: TcpProxy, tmp_path: Path
) -> None:
    ctx.settings.repository.give_up_seconds = 0.0
    src = tmp_path / "src"
    make_package(src, "gone-lib")
    make_package(src, "gone-tool", build_depends=("gone-lib",))
    pulp_proxy.cut()
    build_id = build(ctx, src, "outage-gone", "gone-lib", "gone-tool")
    view = control.show_build(ctx, build_id)
    assert view.state == "failed", view
    assert [(s.name, s.state) for s in view.steps] == [("gone-lib", "succeeded"), ("gone-tool", "skipped")]
    assert assert_one_line(view.steps[1].error, "Pulp at").startswith("not built: staging failed: Pulp at")
    error = assert_one_line(view.error, "Pulp at")
    assert error.startswith("step(s) gone-tool not built: staging failed") and error.endswith("not moved")

    pulp_proxy.restore()
    control.retry_build(ctx, build_id)
    drain(ctx)
    view = control.show_build(ctx, build_id)
    assert view.state == "succeeded", view
    assert [s.attempt for s in view.steps] == [1, 1]  # the library was not built again
    assert apt_version(tmp_path, latest_line(ctx, "outage-gone"), "gone-tool") == "1.0"


def test_staging_left_by_a_build_that_failed_while_pulp_was_down_is_dropped_by_the_reaper(
    ctx: FarmContext, pulp_proxy: TcpProxy, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_package(src, "left-lib")
    make_package(src, "left-tool", build_depends=("left-lib",), build="echo broken; exit 1")
    runner = ctx.runner
    ctx.runner = CutAfterBuild(runner, pulp_proxy, step="left-tool")  # Pulp is down when it ends
    build_id = build(ctx, src, "outage-left", "left-lib", "left-tool")
    assert control.show_build(ctx, build_id).state == "failed"
    with ctx.db.session() as session:
        staging = session.get_one(Build, build_id).staging_source
    assert staging is not None
    AptClient(tmp_path / "apt-staging", staging.line()).update()  # still served

    assert reap(ctx).staging_dropped == []  # Pulp still down
    pulp_proxy.restore()
    assert reap(ctx).staging_dropped == [build_id]
    with ctx.db.session() as session:
        assert session.get_one(Build, build_id).staging_source is None
    with pytest.raises(AptError):
        AptClient(tmp_path / "apt-gone", staging.line()).update()
