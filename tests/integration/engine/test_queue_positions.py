"""``build show`` says where each waiting step stands (issue 16): its position in its priority
class under the fair share, or what it waits for."""

from __future__ import annotations

from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.model.types import StepState
from buildfarm.state.models import Step

from dispatchkit import ctx, ready_steps

__all__ = ["ctx"]  # the fixture, imported for this module's tests


def test_positions_follow_the_fair_share_and_pending_steps_name_their_dependencies(ctx: FarmContext) -> None:
    with ctx.db.session() as session:
        first = ready_steps(session, "alpha", "ann", 6)
        second = ready_steps(session, "beta", "bob", 2)
        release = ready_steps(session, "gamma", "carl", 1, kind="release")
        waiting = session.get_one(Step, second[1])
        waiting.state, waiting.depends_on = StepState.PENDING, [session.get_one(Step, second[0]).name]
        build_a, build_b = (session.get_one(Step, s).build_id for s in (first[0], second[0]))
        build_r = session.get_one(Step, release[0]).build_id

    shown = {s.id: s for s in control.show_build(ctx, build_b).steps}
    assert shown[second[0]].waiting == "position 2 in class nightly"  # after A's oldest, before A's second
    assert shown[second[0]].position == 2
    assert shown[second[1]].waiting == "waiting: dependencies (beta-bob-0)"
    assert [s.waiting for s in control.show_build(ctx, build_a).steps] == [
        f"position {n} in class nightly" for n in (1, 3, 4, 5, 6, 7)
    ]
    [release_step] = control.show_build(ctx, build_r).steps
    assert release_step.waiting == "position 1 in class release"
