"""One release that skips, reuses and makes ready, written back in bulk (one executemany a kind
of change), on SQLite and PostgreSQL: every change lands on its own step."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from buildfarm.engine import advance_build
from buildfarm.model.types import StepState
from buildfarm.state.models import Build, Step, utcnow

from farmkit import dispatcher, make_test_context


def _step(build_id: int, name: str, key: str, depends: list[str], state: StepState) -> Step:
    return Step(
        build_id=build_id,
        name=name,
        version="1",
        origin="o",
        source_sha256="0" * 64,
        tree_hash="t",
        input_key=key.ljust(64, "0"),
        depends_on=depends,
        state=state,
    )


def test_a_release_writes_each_kind_of_change(tmp_path: Path, database_url: str) -> None:
    ctx = make_test_context(tmp_path, database_url)
    with ctx.db.session() as session:
        first = Build(project="p", branch="main", kind="nightly", user="u", manifest={}, environment_id="e")
        again = Build(project="p", branch="main", kind="nightly", user="u", manifest={}, environment_id="e")
        session.add_all([first, again])
        session.flush()
        original = _step(first.id, "lib", "lib", [], StepState.SUCCEEDED)
        original.finished_at, original.node, original.log_key = utcnow(), "node7", "logs/lib"
        original.output_identity = "identity-of-lib"
        session.add(original)
        session.add_all(
            [
                _step(again.id, "lib", "lib", [], StepState.PENDING),  # reused
                _step(again.id, "app", "app", ["lib"], StepState.PENDING),  # ready once lib is reused
                _step(again.id, "broken", "broken", [], StepState.FAILED),
                _step(again.id, "after", "after", ["broken"], StepState.PENDING),  # skipped
            ]
        )
        session.flush()
        original_id, build_id = original.id, again.id
    advance_build(ctx, build_id)
    with ctx.db.session() as session:
        steps = {s.name: s for s in session.scalars(select(Step).where(Step.build_id == build_id))}
        lib, app, after = steps["lib"], steps["app"], steps["after"]
        assert lib.state == StepState.SUCCEEDED and lib.reused_from == original_id
        assert (lib.node, lib.log_key, lib.output_identity) == ("node7", "logs/lib", "identity-of-lib")
        assert lib.started_at is not None and lib.finished_at is not None
        assert app.state == StepState.READY and app.ready_at is not None and app.queue_id is not None
        assert after.state == StepState.SKIPPED and after.finished_at is not None
        assert after.error == "not built: dependency broken did not succeed"
        assert steps["broken"].state == StepState.FAILED
        app_id = app.id
    assert dispatcher(ctx).runs == [(app_id, 1)]
    ctx.db.dispose()
