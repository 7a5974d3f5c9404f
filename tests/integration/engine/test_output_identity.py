"""Dependents are reused when their dependencies rebuild into identical packages (issue 16 part 4).

Real dpkg-buildpackage builds, real SQLite and PostgreSQL; messages delivered by the test
(``farmkit``), so which steps ran is known exactly.  The library's package holds its source
without comment lines: a comment edit changes its source (its input key), not what it builds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from buildfarm.engine import control
from buildfarm.engine.advance import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.steps import run_step
from buildfarm.engine.submit import submit_build
from buildfarm.model.manifest import load_manifest
from buildfarm.state.models import Step
from buildfarm_client.models import BuildView, StepView

from debpkgs import make_package, write_manifest
from farmkit import dispatcher, make_test_context

NAMES = ["libgreet", "greet-cli", "greet-doc"]
STRIP_COMMENTS = "sed '/^#/d' greet.src > payload.txt"


@pytest.fixture
def ctx(tmp_path: Path, database_url: str) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, database_url)
    yield context
    context.db.dispose()


def _sources(root: Path) -> None:
    make_package(root, "libgreet", build=STRIP_COMMENTS)
    _library(root, "# the greeting\ngreet: hello\n")
    make_package(root, "greet-cli", build_depends=("libgreet",))
    make_package(root, "greet-doc", build_depends=("greet-cli",))


def _library(root: Path, text: str) -> None:
    (root / "libgreet" / "greet.src").write_text(text)


def _build(ctx: FarmContext, root: Path) -> tuple[BuildView, set[str]]:
    """Submit and finish a build; return its view and the steps that ran."""
    rec = dispatcher(ctx)
    build_id = submit_build(ctx, load_manifest(write_manifest(root, NAMES)), root, "alice")
    ran: set[str] = set()
    for _ in range(50):
        if rec.advances:
            advance_build(ctx, rec.advances.pop(0))
        elif rec.runs:
            step_id, _attempt = rec.runs.pop(0)
            with ctx.db.session() as session:
                ran.add(session.get_one(Step, step_id).name)
            run_step(ctx, step_id, "node1")
        else:
            break
    view = control.show_build(ctx, build_id)
    assert view.state == "succeeded", view
    return view, ran


def _log(step: StepView) -> str:
    assert step.log is not None
    return Path(step.log).read_text()


def _steps(view: BuildView) -> dict[str, StepView]:
    return {s.name: s for s in view.steps}


def test_comment_change_rebuilds_the_library_and_reuses_its_dependents(
    ctx: FarmContext, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    _sources(root)
    first, ran = _build(ctx, root)
    assert ran == set(NAMES)

    _library(root, "# the greeting, said once\ngreet: hello\n")  # a comment: the same package
    second, ran = _build(ctx, root)
    assert ran == {"libgreet"}
    steps, before = _steps(second), _steps(first)
    assert steps["libgreet"].input_key != before["libgreet"].input_key
    assert steps["libgreet"].output_identity == before["libgreet"].output_identity
    assert f"buildfarm: outputs identical to build {first.id}'s" in _log(steps["libgreet"])
    assert steps["greet-cli"].input_key != before["greet-cli"].input_key  # the plan alone rebuilt it
    assert (steps["greet-cli"].state, steps["greet-cli"].reused_from) == ("reused", before["greet-cli"].id)
    assert steps["greet-cli"].reuse_reason == f"outputs of libgreet unchanged (identical to build {first.id})"
    assert steps["greet-doc"].state == "reused"
    assert steps["greet-doc"].reuse_reason == (
        f"outputs of greet-cli, libgreet unchanged (identical to build {first.id})"
    )
    answered = BuildView.model_validate_json(second.model_dump_json())  # what the API sends
    assert {s.name: s.reuse_reason for s in answered.steps} == {n: s.reuse_reason for n, s in steps.items()}

    _library(root, "# the greeting, said once\ngreet: hello, world\n")  # the code: another package
    third, ran = _build(ctx, root)
    assert ran == {"libgreet", "greet-cli", "greet-doc"}
    steps = _steps(third)
    assert steps["libgreet"].output_identity != before["libgreet"].output_identity
    assert f"buildfarm: outputs differ from build {second.id}'s" in _log(steps["libgreet"])
    # greet-cli's own package did not change, but greet-doc installs libgreet's too: it rebuilds
    assert steps["greet-cli"].output_identity == before["greet-cli"].output_identity
    assert steps["greet-doc"].reuse_reason is None


def test_steps_built_before_output_identities_are_reused_by_input_key_only(
    ctx: FarmContext, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    _sources(root)
    _build(ctx, root)
    with ctx.db.session() as session:  # rows as the farm left them before the upgrade
        session.execute(update(Step).values(own_key=None, output_identity=None, resolved_key=None))
    _library(root, "# the greeting, said once\ngreet: hello\n")
    _view, ran = _build(ctx, root)
    assert ran == {"libgreet", "greet-cli", "greet-doc"}  # today's behaviour: nothing to compare
    _library(root, "# the greeting, said twice\ngreet: hello\n")
    view, ran = _build(ctx, root)
    assert ran == {"libgreet"}  # the identities recorded by the build after the upgrade
    assert _steps(view)["greet-cli"].state == "reused"
