"""``make bench``: the scheduler's fair share, simulated — each tenant's share of the nodes vs its weight.

An event simulation (virtual clock, no sleeping) of a farm whose free nodes choose with the
scheduler's own rule (:func:`buildfarm.engine.fairshare.tenant_order`, the charge at the start
and the correction at the end as :mod:`buildfarm.engine.steps` applies them): ``NODES`` nodes,
``TENANTS`` tenants (project/user) of one priority class, every one backlogged with more steps
than the run can build, step durations spread like a package farm's (log-normal, median 60 s,
a tail of long builds), and project weights 1, 2 and 4.  While every tenant is backlogged its
share of node-seconds should be its weight over the sum of weights: the table prints both,
and Jain's fairness index of share/weight (1.0 is exact).  Then a release step (a class of its
own) submitted into the full queue: it waits only for the first node to free.

The real claim also reads and writes these numbers in the database; its cost is not measured
here.  Prints numbers; asserts nothing.
"""

from __future__ import annotations

import datetime as dt
import heapq
import random
import sys
import tempfile
from pathlib import Path

from buildfarm.engine.fairshare import tenant_order, weight_of
from buildfarm.model.settings import Settings, load_settings

NODES = 50
TENANTS = 20
STEPS_PER_TENANT = 2000
HORIZON_SECONDS = 6 * 3600.0  # measured while every tenant still has steps queued
SEED = 16
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def durations(rng: random.Random, count: int) -> list[float]:
    return [min(4 * 3600.0, rng.lognormvariate(4.1, 0.9)) for _ in range(count)]


def simulate(
    settings: Settings, tenants: list[tuple[str, str]], nodes: int, per_tenant: int, horizon: float
) -> tuple[dict[tuple[str, str], float], float, float]:
    """Node-seconds each tenant got before ``horizon``; the release step's wait; the median step."""
    rng = random.Random(SEED)
    queues = {t: durations(rng, per_tenant) for t in tenants}
    taken = dict.fromkeys(tenants, 0)
    own = dict.fromkeys(tenants, 0.0)
    farm = 0.0
    charge = settings.steps.share_charge_seconds
    used = dict.fromkeys(tenants, 0.0)
    free = [(0.0, n) for n in range(nodes)]  # (time the node frees, node)
    heapq.heapify(free)
    release_at, release_wait = horizon / 2, -1.0
    while free:
        now, node = heapq.heappop(free)
        if now >= horizon:
            break
        if release_wait < 0 <= now - release_at:  # the release class goes first
            release_wait = now - release_at
            heapq.heappush(free, (now + 60.0, node))
            continue
        waiting = [(6, t, T0) for t in tenants if taken[t] < per_tenant]
        if not waiting:
            break
        _klass, tenant = tenant_order(waiting, own, farm)[0]
        weight = weight_of(tenant[0], settings)
        start = max(own[tenant], farm)
        farm = start
        duration = queues[tenant][taken[tenant]]
        taken[tenant] += 1
        # the charge at the start, corrected at the end: the net is the node-seconds used
        own[tenant] = start + charge / weight + (duration - charge) / weight
        used[tenant] += min(duration, horizon - now)
        heapq.heappush(free, (now + duration, node))
    median = sorted(d for q in queues.values() for d in q)[len(tenants) * per_tenant // 2]
    return used, release_wait, median


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def main() -> None:
    tenants = [(f"project{i}", f"user{i}") for i in range(TENANTS)]
    weights = {f"project{i}": float((1, 2, 4)[i % 3]) for i in range(TENANTS)}
    with tempfile.TemporaryDirectory() as state:
        settings = load_settings(state_dir=Path(state), fair_share_weights=weights)
    used, release_wait, median = simulate(settings, tenants, NODES, STEPS_PER_TENANT, HORIZON_SECONDS)
    total = sum(used.values())
    weight_sum = sum(weights.values())
    print(f"scheduler simulation: {NODES} nodes, {TENANTS} tenants backlogged, {HORIZON_SECONDS / 3600:g} h")
    print(f"{'tenant':<20} {'weight':>6} {'share':>8} {'target':>8}")
    ratios = []
    for tenant in tenants:
        share = used[tenant] / total
        target = weights[tenant[0]] / weight_sum
        ratios.append(share / target)
        print(f"{tenant[0] + '/' + tenant[1]:<20} {weights[tenant[0]]:>6g} {share:>8.2%} {target:>8.2%}")
    print(
        f"Jain's fairness index of share/weight: {jain(ratios):.4f} (1.0 = every tenant its weighted share)"
    )
    print(
        f"release step submitted into the full queue waited {release_wait:.1f} s (median step {median:.0f} s)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
