"""The engine on real SQLite and PostgreSQL, real dpkg-buildpackage and a real APT repository.

Messages are delivered by the test (see ``farmkit``), so duplicates, redeliveries and dead
nodes are played exactly.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from buildfarm.engine import control
from buildfarm.engine.advance import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.reaper import reap
from buildfarm.engine.steps import claim_step, finish_step, run_step
from buildfarm.engine.submit import submit_build
from buildfarm.model.errors import ConflictError, ManifestError, NotFoundError
from buildfarm.model.manifest import load_manifest
from buildfarm.state.models import Step, StepOutput, StepState

from debpkgs import make_package, write_manifest
from farmkit import dispatcher, drain, make_test_context
from gitkit import LOOPBACK_GIT, GitServer, commit_tree
from helpers import wait_until


def _submit(ctx: FarmContext, root: Path, names: list[str], **kw: str) -> int:
    manifest = write_manifest(root, names, **kw)
    return submit_build(ctx, load_manifest(manifest), root, "alice")


def _states(ctx: FarmContext, build_id: int) -> dict[str, str]:
    return {s.name: s.state for s in control.show_build(ctx, build_id).steps}


@pytest.fixture
def ctx(tmp_path: Path, database_url: str) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, database_url, **LOOPBACK_GIT)
    yield context
    context.db.dispose()


def test_chain_builds_in_order_publishes_and_reruns_as_reused(ctx: FarmContext, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "base-lib")
    make_package(src, "mid-tool", build_depends=("base-lib",))
    make_package(src, "top-doc", build_depends=("mid-tool",))
    make_package(src, "solo")
    build_id = _submit(ctx, src, ["top-doc", "mid-tool", "base-lib", "solo"])
    rec = dispatcher(ctx)
    assert set(rec.advances) == {build_id}  # as its trees were packed
    rec.advances.clear()
    advance_build(ctx, build_id)
    with ctx.db.session() as session:
        first_wave = {session.get_one(Step, s).name for s, _ in rec.runs}
    assert first_wave == {"base-lib", "solo"}  # only steps without in-set dependencies
    drain(ctx)
    view = control.show_build(ctx, build_id)
    assert view.state == "succeeded", view
    assert {s.state for s in view.steps} == {"succeeded"}
    finished = {s.name: s.finished_at for s in view.steps}
    started = {s.name: s.started_at for s in view.steps}
    assert finished["base-lib"] <= started["mid-tool"] and finished["mid-tool"] <= started["top-doc"]
    assert view.published and "builds/" in view.published
    latest = ctx.repo.sources("proj", "main")
    assert latest.url.endswith("/latest")

    again = _submit(ctx, src, ["top-doc", "mid-tool", "base-lib", "solo"])
    drain(ctx)
    second = control.show_build(ctx, again)
    assert second.state == "succeeded"
    assert {s.state for s in second.steps} == {"reused"}
    assert all(s.attempt == 0 for s in second.steps)  # nothing ran
    assert rec.runs == []


def test_changed_source_rebuilds_it_and_its_dependents_only(ctx: FarmContext, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "base-lib")
    make_package(src, "mid-tool", build_depends=("base-lib",))
    make_package(src, "solo")
    _submit(ctx, src, ["base-lib", "mid-tool", "solo"])
    drain(ctx)
    make_package(src, "base-lib", payload="changed\n")
    build_id = _submit(ctx, src, ["base-lib", "mid-tool", "solo"])
    drain(ctx)
    assert {s.name: s.state for s in control.show_build(ctx, build_id).steps} == {
        "base-lib": "succeeded",
        "mid-tool": "succeeded",
        "solo": "reused",
    }


def test_duplicate_delivery_builds_once(ctx: FarmContext, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "solo")
    build_id = _submit(ctx, src, ["solo"])
    advance_build(ctx, dispatcher(ctx).advances.pop())
    ((step_id, _attempt),) = dispatcher(ctx).runs
    assert run_step(ctx, step_id, "node1") == "succeeded"
    assert run_step(ctx, step_id, "node2") == "not-claimed"  # redelivered message: nothing happens
    with ctx.db.session() as session:
        step = session.get_one(Step, step_id)
        assert (step.attempt, step.node) == (1, "node1")
        assert len(session.scalars(select(StepOutput).where(StepOutput.step_id == step_id)).all()) == 2
    drain(ctx)
    assert control.show_build(ctx, build_id).state == "succeeded"


def test_concurrent_claims_have_one_winner(ctx: FarmContext, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "solo")
    _submit(ctx, src, ["solo"])
    advance_build(ctx, dispatcher(ctx).advances.pop())
    ((step_id, _attempt),) = dispatcher(ctx).runs
    barrier = threading.Barrier(6)
    claims: list[object] = []

    def claim(i: int) -> None:
        barrier.wait()
        claims.append(claim_step(ctx, step_id, f"node{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([c for c in claims if c is not None]) == 1


def test_expired_lease_goes_to_another_node_and_fences_the_old_attempt(
    ctx: FarmContext, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_package(src, "solo")
    build_id = _submit(ctx, src, ["solo"])
    advance_build(ctx, dispatcher(ctx).advances.pop())
    ((step_id, _),) = dispatcher(ctx).runs
    dispatcher(ctx).runs.clear()
    dead = claim_step(ctx, step_id, "node1")  # node1 claims, then "dies": no heartbeat
    assert dead is not None and dead.attempt == 1
    assert reap(ctx).expired == []  # lease still live: nothing reclaimed
    with ctx.db.session() as session:  # time passes beyond the lease
        session.execute(
            update(Step)
            .where(Step.id == step_id)
            .values(lease_expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    report = reap(ctx)
    assert report.expired == [step_id]
    assert dispatcher(ctx).runs == [(step_id, 2)]
    assert _states(ctx, build_id)["solo"] == "ready"
    assert run_step(ctx, step_id, "node2") == "succeeded"
    # the orphaned first attempt finishes late: its result is refused
    assert finish_step(ctx, dead, [], None) is False
    assert finish_step(ctx, dead, [], "boom") is False
    with ctx.db.session() as session:
        step = session.get_one(Step, step_id)
        assert (step.state, step.attempt, step.node, step.error) == ("succeeded", 2, "node2", None)
        assert {o.attempt for o in step.outputs} == {2}
    drain(ctx)
    assert control.show_build(ctx, build_id).state == "succeeded"


def test_failure_skips_dependents_and_keeps_latest(ctx: FarmContext, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_package(src, "base-lib")
    make_package(src, "mid-tool", build_depends=("base-lib",))
    good = _submit(ctx, src, ["base-lib", "mid-tool"])
    drain(ctx)
    assert ctx.repo.sources("proj", "main").url.endswith("latest")
    latest_before = (ctx.settings.state_dir / "repos" / "proj" / "main" / "latest").resolve()
    make_package(src, "base-lib", build="echo compiler exploded; exit 2", version="2.0")
    bad = _submit(ctx, src, ["base-lib", "mid-tool"])
    drain(ctx)
    view = control.show_build(ctx, bad)
    assert view.state == "failed"
    assert _states(ctx, bad) == {"base-lib": "failed", "mid-tool": "skipped"}
    assert "base-lib" in (view.error or "") and "latest was not moved" in (view.error or "")
    failed = next(s for s in view.steps if s.name == "base-lib")
    assert failed.error and "exited with status" in failed.error
    assert failed.log is not None and "compiler exploded" in Path(failed.log).read_text()
    assert (ctx.settings.state_dir / "repos" / "proj" / "main" / "latest").resolve() == latest_before
    assert str(good) in latest_before.name
    with pytest.raises(ConflictError, match="only failed or cancelled"):
        control.retry_build(ctx, good)
    make_package(src, "base-lib", version="2.0")  # fixed; retry builds the same recorded source
    control.retry_build(ctx, bad)
    drain(ctx)
    assert _states(ctx, bad) == {"base-lib": "failed", "mid-tool": "skipped"}  # same source, same failure


def test_cancel_stops_a_running_builder(ctx: FarmContext, tmp_path: Path) -> None:
    src = tmp_path / "src"
    marker = tmp_path / "still-running"
    # The builder would sleep 10 minutes: the step ends well before that only if it is killed.
    make_package(src, "slow", build=f"sleep 600; touch {marker}")
    build_id = _submit(ctx, src, ["slow"])
    advance_build(ctx, dispatcher(ctx).advances.pop())
    ((step_id, _),) = dispatcher(ctx).runs
    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(run_step(ctx, step_id, "node1")), daemon=True)
    worker.start()
    wait_until(lambda: _states(ctx, build_id)["slow"] == "running", 60, "the step to run")
    control.cancel_build(ctx, build_id)
    wait_until(lambda: not worker.is_alive(), 300, "the cancelled step's builder to be killed")
    assert results == ["lease-lost"]
    assert not marker.exists()
    view = control.show_build(ctx, build_id)
    assert view.state == "cancelled"
    assert _states(ctx, build_id) == {"slow": "cancelled"}
    with pytest.raises(ConflictError, match="only a running build"):
        control.cancel_build(ctx, build_id)


def test_show_and_logs_errors(ctx: FarmContext) -> None:
    with pytest.raises(NotFoundError, match="build 999 does not exist"):
        control.show_build(ctx, 999)


def test_step_state_enum_matches_spec() -> None:
    assert {s.value for s in StepState} == {
        "pending",
        "ready",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "skipped",
    }


def test_git_source_hashes_like_a_local_tree_and_is_reused(ctx: FarmContext, tmp_path: Path) -> None:
    local = tmp_path / "local"
    make_package(local, "gitpkg")
    repo = tmp_path / "served" / "upstream"
    shutil.copytree(local / "gitpkg", repo / "packaging")
    commit_tree(repo, tag="v1")
    with GitServer(tmp_path / "served") as server:
        manifest = tmp_path / "git.yaml"
        manifest.write_text(
            f"project: proj\nbranch: main\nkind: nightly\npackages:\n"
            f"  - git: {server.url(repo)}\n    ref: v1\n    subdir: packaging\n"
        )
        from_git = submit_build(ctx, load_manifest(manifest), tmp_path, "alice")
        drain(ctx)
        view = control.show_build(ctx, from_git)
        assert view.state == "succeeded" and view.steps[0].state == "succeeded"
        from_path = _submit(ctx, local, ["gitpkg"])  # the same tree, read from a directory
        drain(ctx)
        again = control.show_build(ctx, from_path)
        assert again.steps[0].state == "reused"
        assert again.steps[0].input_key == view.steps[0].input_key

        bad = tmp_path / "badref.yaml"
        bad.write_text(
            f"project: proj\nbranch: main\nkind: nightly\npackages:\n"
            f"  - git: {server.url(repo)}\n    ref: nope\n"
        )
        # git's meaningful line, not the tail of its hint
        refused = r"packages\[0\] \(git://.*@nope\): git fetch failed: fatal: couldn't find remote ref nope"
        with pytest.raises(ManifestError, match=refused):
            submit_build(ctx, load_manifest(bad), tmp_path, "alice")


def test_step_whose_outputs_left_the_store_is_built_again(ctx: FarmContext, tmp_path: Path) -> None:
    """A lost object (a bucket emptied, a store swapped) makes reuse build again, not fail to publish."""
    src = tmp_path / "src"
    make_package(src, "lost")
    first_id = _submit(ctx, src, ["lost"])
    drain(ctx)
    first = control.show_build(ctx, first_id)
    assert first.state == "succeeded", first
    sha = next(o["sha256"] for o in first.steps[0].outputs if o["filename"].endswith(".deb"))
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert ctx.store.delete_objects([sha], older_than=future).deleted == 1
    assert not ctx.store.has(sha)

    again = _submit(ctx, src, ["lost"])
    drain(ctx)
    view = control.show_build(ctx, again)
    assert view.state == "succeeded", view
    assert view.steps[0].state == "succeeded" and view.steps[0].input_key == first.steps[0].input_key
    assert ctx.store.has(sha)  # the same bytes again (the build is reproducible)
    third = _submit(ctx, src, ["lost"])
    drain(ctx)
    assert _states(ctx, third) == {"lost": "reused"}  # the new build is what later ones reuse
