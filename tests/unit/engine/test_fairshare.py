"""The scheduler's order as a pure function (issue 16): class, then fair share, then critical path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from buildfarm.engine.fairshare import ReadyStep, order_ready, tenant_order
from buildfarm.model.settings import load_settings

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _steps(tenant: tuple[str, str], ids: range, klass: int = 6, start: int = 0) -> list[ReadyStep]:
    return [ReadyStep(i, klass, tenant, 0, T0 + dt.timedelta(seconds=start + n)) for n, i in enumerate(ids)]


def test_a_later_tenant_alternates_with_an_earlier_one(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    steps = _steps(("a", "ann"), range(1, 7)) + _steps(("b", "bob"), range(7, 9), start=10)
    order = [s.step_id for s in order_ready(steps, {}, 0.0, settings)]
    assert order == [1, 7, 2, 8, 3, 4, 5, 6]


def test_weights_give_shares_and_classes_come_first(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, fair_share_weights={"big": 2})
    steps = _steps(("big", "u"), range(1, 11)) + _steps(("small", "u"), range(11, 21))
    steps += _steps(("late", "u"), range(21, 22), klass=0, start=100)  # a release step, queued last
    order = order_ready(steps, {}, 0.0, settings)
    assert order[0].step_id == 21
    first_nine = [s.tenant[0] for s in order[1:10]]
    assert first_nine.count("big") == 6 and first_nine.count("small") == 3


def test_a_tenant_that_used_much_waits_but_an_idle_one_does_not_own_the_farm(tmp_path: Path) -> None:
    used = {("heavy", "u"): 1000.0, ("idle", "u"): 5.0}
    candidates = [(6, ("heavy", "u"), T0), (6, ("idle", "u"), T0), (6, ("new", "u"), T0)]
    # the farm's virtual time is 500: the idle tenant starts there, like a new one, not at 5
    assert tenant_order(candidates, used, 500.0) == [
        (6, ("idle", "u")),
        (6, ("new", "u")),
        (6, ("heavy", "u")),
    ]
