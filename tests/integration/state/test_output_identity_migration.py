"""0014: a farm upgraded with builds under way keeps building them, by input key as before."""

from __future__ import annotations

from pathlib import Path

from buildfarm.engine import control
from buildfarm.engine.advance import advance_build

from farmkit import dispatcher, make_test_context
from migrationkit import EarlierFarm, farm_at_0011

__all__ = ["farm_at_0011"]  # the fixture, imported for this module's tests


def test_an_upgrade_leaves_earlier_steps_without_identities_and_releases_them(
    farm_at_0011: EarlierFarm, tmp_path: Path
) -> None:
    now = farm_at_0011.now
    farm_at_0011.add_build(
        [
            {"id": 1, "name": "lib", "input_key": "c" * 64, "depends_on": [], "state": "succeeded",
             "attempt": 1, "finished_at": now},
            {"id": 2, "name": "app", "input_key": "d" * 64, "depends_on": ["lib"], "state": "pending",
             "attempt": 0, "finished_at": None},
        ]
    )  # fmt: skip
    ctx = make_test_context(tmp_path, farm_at_0011.url)  # upgrades to the head
    try:
        advance_build(ctx, 1)
        steps = {s.name: s for s in control.show_build(ctx, 1).steps}
        assert (steps["lib"].output_identity, steps["lib"].reuse_reason) == (None, None)
        assert steps["app"].state == "ready"  # no identities to compare: released to be built
        assert [step_id for step_id, _ in dispatcher(ctx).runs] == [2]
    finally:
        ctx.db.dispose()
