"""Node capabilities on real Celery workers (issue 16): two nodes with different labels, each
consuming ``builds`` and its own ``node.<name>`` queue as every farm worker does; the steps that
require ``arch=arm64`` are routed to the arm64 node's queue and built there, the others anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from buildfarm.dispatch.celery_app import BUILD_QUEUE, node_queue
from buildfarm.engine import routing
from buildfarm.engine.advance import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.model.manifest import load_manifest
from buildfarm.state.models import Step

from debpkgs import make_package
from dispatchkit import celery_dispatcher, ctx, probe_worker, ready_steps, wait_taken
from farmkit import dispatcher

pytestmark = pytest.mark.integration

AMD = frozenset({"arch=amd64", "native-arch=amd64", "builder=host"})
ARM = frozenset({"arch=arm64", "native-arch=arm64", "builder=host"})

__all__ = ["ctx"]  # the fixture, imported for this module's tests


def test_labelled_steps_go_to_the_capable_node(
    ctx: FarmContext, redis_flush: str, database_url: str, tmp_path: Path
) -> None:
    routing.record_node(ctx, "amd", sorted(AMD))  # as each worker's heartbeat records it
    routing.record_node(ctx, "arm", sorted(ARM))
    with ctx.db.session() as session:
        arm_steps = ready_steps(session, "proj", "ann", 3, requires="arch=arm64")
        plain_steps = ready_steps(session, "proj", "bob", 3)
        tickets = routing.tickets(session, ctx, [session.get_one(Step, s) for s in arm_steps + plain_steps])
    assert {node for step_id, _a, node in tickets if step_id in arm_steps} == {"arm"}
    celery = celery_dispatcher(tmp_path, redis_flush)
    for step_id, attempt, node in tickets:
        celery.run_step(step_id, attempt, "nightly", node)

    common = {"redis_url": redis_flush, "database_url": database_url}
    with (
        probe_worker(tmp_path, "amd", f"{BUILD_QUEUE},{node_queue('amd')}", labels=AMD, **common) as record,
        probe_worker(tmp_path, "arm", f"{BUILD_QUEUE},{node_queue('arm')}", labels=ARM, **common),
    ):
        taken = wait_taken(record, 6, "the two nodes to use every ticket")

    by_step = {step_id: node for step_id, node in taken if step_id}
    assert set(by_step) == set(arm_steps + plain_steps)  # every step built once
    assert {by_step[s] for s in arm_steps} == {"arm"}


def test_a_foreign_architecture_with_a_node_of_its_own_is_built_there_natively(
    ctx: FarmContext, redis_flush: str, database_url: str, tmp_path: Path
) -> None:
    routing.record_node(ctx, "amd", sorted(AMD))  # both heard just now: online
    routing.record_node(ctx, "arm", sorted(ARM))
    root = tmp_path / "src"
    control = make_package(root, "tool") / "debian" / "control"
    control.write_text(control.read_text().replace("Architecture: all", "Architecture: any"))
    (root / "buildfarm.yaml").write_text(
        "project: proj\nbranch: main\nkind: nightly\narchitectures: [amd64, arm64]\n"
        "packages:\n  - path: tool\n"
    )
    # the host runner cannot cross-build: the arm64 step is the arm64 node's, natively
    build_id = submit_build(ctx, load_manifest(root / "buildfarm.yaml"), root, "alice")
    with ctx.db.session() as session:
        steps = {s.name: s for s in session.query(Step).filter(Step.build_id == build_id)}
        fields = {n: (s.host_arch, s.requires, s.environment_id) for n, s in steps.items()}
        ids = {s.id: n for n, s in steps.items()}
    assert fields == {
        "tool": ("amd64", "arch=amd64", None),  # nodes of two architectures: each says its own
        "tool:arm64": ("arm64", "arch=arm64,native-arch=arm64", None),  # no cross environment, no --host
    }
    advance_build(ctx, build_id)  # releases both: their tickets go to the capable nodes' queues
    recorded = dispatcher(ctx)
    assert dict(zip((ids[s] for s, _a in recorded.runs), recorded.nodes, strict=True)) == {
        "tool": "amd",
        "tool:arm64": "arm",
    }
    celery = celery_dispatcher(tmp_path, redis_flush)
    for (step_id, attempt), node in zip(recorded.runs, recorded.nodes, strict=True):
        celery.run_step(step_id, attempt, "nightly", node)

    common = {"redis_url": redis_flush, "database_url": database_url}
    with (
        probe_worker(tmp_path, "amd", f"{BUILD_QUEUE},{node_queue('amd')}", labels=AMD, **common) as record,
        probe_worker(tmp_path, "arm", f"{BUILD_QUEUE},{node_queue('arm')}", labels=ARM, **common),
    ):
        taken = wait_taken(record, 2, "the two nodes to take the build's steps")
    assert {ids[step_id]: node for step_id, node in taken} == {"tool": "amd", "tool:arm64": "arm"}
