"""Manifest ``architectures`` at submit: what the steps record, the keys a build that lists only
the node's own architecture keeps, and a runner that cannot cross-build refusing foreign ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from buildfarm.engine import routing
from buildfarm.engine.advance import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import native_architecture, submit_build
from buildfarm.model.errors import PlanError
from buildfarm.model.manifest import load_manifest
from buildfarm.model.types import StepState
from buildfarm.state.models import Build, Step

from debpkgs import make_package, write_manifest
from farmkit import drain, make_test_context


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'state.db'}")
    yield context
    context.db.dispose()


def _any_package(root: Path, name: str) -> None:
    control = make_package(root, name) / "debian" / "control"
    control.write_text(control.read_text().replace("Architecture: all", "Architecture: any"))


def _submit(
    ctx: FarmContext, root: Path, branch: str, architectures: str | None
) -> dict[str, tuple[str, bool, str]]:
    manifest = write_manifest(root, ["tool"], branch=branch)
    if architectures is not None:
        manifest.write_text(manifest.read_text() + f"architectures: {architectures}\n")
    build_id = submit_build(ctx, load_manifest(manifest), root, "alice")
    with ctx.db.session() as session:
        steps = session.scalars(select(Step).where(Step.build_id == build_id)).all()
        return {s.name: (s.host_arch, s.arch_all, s.input_key) for s in steps}


def test_listing_only_the_nodes_architecture_changes_nothing(ctx: FarmContext, tmp_path: Path) -> None:
    _any_package(tmp_path, "tool")
    native = native_architecture(ctx)
    plain = _submit(ctx, tmp_path, "plain", None)
    listed = _submit(ctx, tmp_path, "listed", f"[{native}]")
    assert plain == listed == {"tool": (native, True, plain["tool"][2])}


def test_a_runner_that_cannot_cross_build_refuses_foreign_architectures(
    ctx: FarmContext, tmp_path: Path
) -> None:
    _any_package(tmp_path, "tool")
    foreign = "arm64" if native_architecture(ctx) != "arm64" else "amd64"
    with pytest.raises(
        PlanError, match=f"building for {foreign} needs cross-building, which the host runner"
    ):
        _submit(ctx, tmp_path, "multi", f"[{native_architecture(ctx)}, {foreign}]")
    with ctx.db.session() as session:
        assert session.scalars(select(Build)).all() == []  # nothing recorded


def _submit_with(ctx: FarmContext, root: Path, branch: str, extra: str) -> int:
    """A build of ``tool`` whose manifest entry has ``extra`` (``arch: ...``, ``requires: ...``)."""
    manifest = root / "buildfarm.yaml"
    manifest.write_text(
        f"project: proj\nbranch: {branch}\nkind: nightly\npackages:\n  - {{path: tool{extra}}}\n"
    )
    return submit_build(ctx, load_manifest(manifest), root, "alice")


def test_requires_labels_leave_the_key_alone_the_architecture_does_not(
    ctx: FarmContext, tmp_path: Path
) -> None:
    """``requires:`` says where a step may run (a big machine builds the same packages): the
    same inputs are reused whatever it asks.  ``arch:`` says what it is built for: another
    architecture's packages, so another key, never the native build's outputs."""
    _any_package(tmp_path, "tool")
    native = native_architecture(ctx)
    foreign = "arm64" if native != "arm64" else "amd64"
    first = _submit_with(ctx, tmp_path, "main", "")
    drain(ctx)
    big = _submit_with(ctx, tmp_path, "main", ", requires: [cpu=large]")
    advance_build(ctx, big)
    mine = _submit_with(ctx, tmp_path, "main", f", arch: {native}")
    other = _submit_with(ctx, tmp_path, "main", f", arch: {foreign}")
    with ctx.db.session() as session:
        steps = {s.build_id: s for s in session.scalars(select(Step))}
        assert steps[first].state == StepState.SUCCEEDED
        # the same inputs on a large node: the same key, reused without building
        assert steps[big].requires == "cpu=large"
        assert steps[big].input_key == steps[first].input_key
        assert steps[big].state == StepState.SUCCEEDED and steps[big].reused_from == steps[first].id
        # built for the node's own architecture, said or not: the same packages, the same key
        assert steps[mine].input_key == steps[first].input_key
        # built for another one, by a node of it: its own key, its architecture recorded
        assert (steps[other].host_arch, steps[other].requires) == (
            foreign,
            f"arch={foreign},native-arch={foreign}",
        )
        assert steps[other].input_key != steps[first].input_key
        assert steps[other].environment_id is None  # the node's own environment, no cross one


def test_a_foreign_architecture_a_node_only_accepts_is_no_native_one(
    ctx: FarmContext, tmp_path: Path
) -> None:
    """A node whose dpkg accepts arm64 as a foreign architecture runs arm64 binaries, but its
    compiler builds for its own: arm64 steps are cross-built then (which the host runner
    cannot), not given to it as native ones."""
    native = native_architecture(ctx)
    foreign = "arm64" if native != "arm64" else "amd64"
    routing.record_node(ctx, "multiarch", [f"arch={native}", f"arch={foreign}", f"native-arch={native}"])
    _any_package(tmp_path, "tool")
    with pytest.raises(PlanError, match=f"building for {foreign} needs cross-building"):
        _submit(ctx, tmp_path, "multi", f"[{native}, {foreign}]")
    routing.record_node(ctx, "own", [f"arch={foreign}", f"native-arch={foreign}"])
    steps = _submit(ctx, tmp_path, "multi", f"[{native}, {foreign}]")
    assert steps[f"tool:{foreign}"][0] == foreign  # a node of its own: built there, natively
