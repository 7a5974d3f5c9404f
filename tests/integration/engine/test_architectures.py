"""Manifest ``architectures`` at submit: what the steps record, the keys a build that lists only
the node's own architecture keeps, and a runner that cannot cross-build refusing foreign ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import native_architecture, submit_build
from buildfarm.model.errors import PlanError
from buildfarm.model.manifest import load_manifest
from buildfarm.state.models import Build, Step

from debpkgs import make_package, write_manifest
from farmkit import make_test_context


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
