"""Pack a recorded build's trees while its first steps build (issue 16).

A submit (:mod:`buildfarm.engine.submit`) reads and checks every tree, plans the build and
records it with every step before the trees not packed before are packed: a step whose source
package is not made yet has no input key, and :mod:`buildfarm.engine.advance` leaves it
waiting.  Here the trees are packed (``dpkg-source -b``, in threads, the heads of the longest
chains first); as each source package is stored, every step it makes keyable (its source and
its dependencies keyed) gets its input key, the same one a submit with every tree packed before
gives, and the build is advanced, so nodes build while the rest packs.  A tree that does not
pack fails the build with that one error: its steps not done are cancelled, a node's result of
one is discarded, nothing is published, and the error is raised to the submitter.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from sqlalchemy import bindparam, select, update

from buildfarm.engine.context import FarmContext
from buildfarm.engine.control import end_build
from buildfarm.engine.dpkgsource import PACK_THREADS  # one idle Perl a thread
from buildfarm.engine.srccache import StoredSource
from buildfarm.engine.srcpkg import TreeToPack
from buildfarm.model.errors import BuildfarmError
from buildfarm.model.planner import Plan
from buildfarm.model.types import BuildState
from buildfarm.state.models import Build, Step, utcnow

log = logging.getLogger(__name__)


class RecordedBuild:
    """A recorded build whose steps are keyed as their sources are packed: the plan, the
    sha256 of each source's packed tarball ("" until packed) and the key function with the
    build's other arguments (:func:`~buildfarm.model.planner.compute_input_keys`).

    Each event that can make a step keyable (its source packed, a dependency keyed) puts it
    among the candidates looked at next, so keying a build of thousands of trees as they pack
    costs each step a few looks, not a pass over the plan per tree."""

    def __init__(self, plan: Plan, tarballs: dict[str, str], keys: Callable[[Sequence[str]], None]) -> None:
        self.build_id = 0
        self.plan = plan
        self.order = plan.order()
        self.tarballs = tarballs
        self.keys = keys
        self.record: dict[str, object] = {}  # the build manifest kept in the store, without its steps
        self._rank = {name: index for index, name in enumerate(self.order)}
        self._of_source: dict[str, list[str]] = {}
        self._dependents: dict[str, list[str]] = {}
        for name in self.order:
            step = plan.steps[name]
            self._of_source.setdefault(step.source or name, []).append(name)
            for dep in step.depends_on:
                self._dependents.setdefault(dep, []).append(name)
        self._candidates = {name for name, step in plan.steps.items() if step.tree_hash}

    def packed(self, stored: StoredSource) -> None:
        self.tarballs[stored.info.name] = stored.sha256
        for name in self._of_source.get(stored.info.name, []):
            self.plan.steps[name].tree_hash = stored.source_key
            self._candidates.add(name)

    def keyable(self) -> list[str]:
        """The steps without a key whose source is packed and whose dependencies have keys (or
        are keyable too), dependencies first."""
        steps = self.plan.steps
        heap = [(self._rank[name], name) for name in self._candidates]
        heapq.heapify(heap)
        self._candidates = set()
        out: list[str] = []
        chosen: set[str] = set()
        while heap:
            _rank, name = heapq.heappop(heap)
            step = steps[name]
            if name in chosen or step.input_key or not step.tree_hash:
                continue
            if all(steps[d].input_key or d in chosen for d in step.depends_on):
                out.append(name)
                chosen.add(name)
                for dependent in self._dependents.get(name, []):
                    heapq.heappush(heap, (self._rank[dependent], dependent))
        return out

    def key_rows(self, names: Sequence[str]) -> list[dict[str, object]]:
        """Key ``names`` and return their rows' new values (:data:`_SET_KEYS`)."""
        self.keys(names)
        return [
            {
                "b_build": self.build_id,
                "b_name": name,
                "k_input": (step := self.plan.steps[name]).input_key,
                "k_own": step.own_key,
                "k_tree": step.tree_hash,
                "k_source": self.tarballs[step.source or name],
            }
            for name in names
        ]


_SET_KEYS = (
    update(Step)
    .where(Step.build_id == bindparam("b_build"), Step.name == bindparam("b_name"), Step.input_key == "")
    .values(
        input_key=bindparam("k_input"),
        own_key=bindparam("k_own"),
        tree_hash=bindparam("k_tree"),
        source_sha256=bindparam("k_source"),
    )
)


PACKING_LEASE_SECONDS = 120.0
"""How long a build recorded before its trees are packed is known to be packed by its submit
(``builds.packing_until``): renewed every :data:`PACKING_RENEW_SECONDS` while it packs (from the
loop that waits for the packing threads, so a tree that takes minutes to pack does not stop it).
Past it, the submitting process is gone and the reaper fails the build
(:func:`fail_abandoned`)."""

PACKING_RENEW_SECONDS = 20.0


def packing_lease(now: dt.datetime) -> dt.datetime:
    return now + dt.timedelta(seconds=PACKING_LEASE_SECONDS)


_RENEW = (
    update(Build)
    .where(Build.id == bindparam("b_id"), Build.state == BuildState.RUNNING)
    .values(packing_until=bindparam("until"))
)

RELEASE_EVERY_SECONDS = 0.2
"""While a submit packs trees, the steps keyed since are released at most this often (and at once
when the first are): an advance per tree of thousands would be a message and a transaction each,
and nodes given work every 0.2 s do not wait for it."""


def pack_and_release(ctx: FarmContext, recorded: RecordedBuild, to_pack: dict[str, TreeToPack]) -> None:
    """Pack the trees of ``to_pack`` (by source name), the ones whose steps head the longest
    chains first, in threads; key and release each step as its sources are stored; then keep
    the build's manifest and advance it.  The first error fails the build (nothing still to pack
    is packed) and is raised."""
    build_id = recorded.build_id
    rank = {name: index for index, name in enumerate(recorded.order)}
    first: dict[str, tuple[int, int]] = {}  # source -> (-priority, plan position) of its first step
    for step in recorded.plan.steps.values():
        mine = (-step.priority, rank[step.name])
        first[step.source] = min(first.get(step.source, mine), mine)
    ordered = sorted(to_pack, key=lambda source: first[source])
    try:
        with ThreadPoolExecutor(max_workers=PACK_THREADS, thread_name_prefix="pack") as pool:
            futures: set[Future[StoredSource]] = {pool.submit(to_pack[source].pack) for source in ordered}
            released = 0.0  # monotonic time of the last advance (0: none yet)
            unreleased = False
            renewed = time.monotonic()  # the lease was taken when the build was recorded
            try:
                while futures:
                    wake = renewed + PACKING_RENEW_SECONDS
                    if unreleased:
                        wake = min(wake, released + RELEASE_EVERY_SECONDS)
                    timeout = max(0.0, wake - time.monotonic())
                    done, futures = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
                    if time.monotonic() - renewed >= PACKING_RENEW_SECONDS:
                        _renew(ctx, build_id, packing_lease(utcnow()))
                        renewed = time.monotonic()
                    for future in done:
                        recorded.packed(future.result())
                    keyed = recorded.keyable()
                    if keyed:
                        with ctx.db.transaction() as connection:
                            connection.execute(_SET_KEYS, recorded.key_rows(keyed))
                        unreleased = True
                    if unreleased and futures and time.monotonic() - released >= RELEASE_EVERY_SECONDS:
                        _advance_meanwhile(ctx, build_id)
                        released, unreleased = time.monotonic(), False
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # the trees being packed end first
                raise
    except Exception as exc:
        _fail_build(ctx, build_id, str(exc))
        raise
    _renew(ctx, build_id, None)  # every source package is stored: nothing left to wait for
    steps = recorded.plan.steps
    ctx.store.put_build_manifest(
        build_id,
        recorded.record
        | {
            "steps": {
                n: {"input_key": s.input_key, "source": recorded.tarballs[s.source or n]}
                for n, s in steps.items()
            }
        },
    )
    ctx.dispatcher.advance(build_id)


def _advance_meanwhile(ctx: FarmContext, build_id: int) -> None:
    """Release the steps keyed so far; a broker that fails now only delays them (to the advance
    after the last tree, or the reaper's), it does not stop the packing."""
    try:
        ctx.dispatcher.advance(build_id)
    except BuildfarmError as exc:
        log.warning("build %s: its first steps wait for the next advance: %s", build_id, exc)


def _renew(ctx: FarmContext, build_id: int, until: dt.datetime | None) -> None:
    """Renew (or, with None, clear) the build's packing lease; a build no longer running (cancelled,
    or failed by the reaper) keeps its state."""
    with ctx.db.transaction() as connection:
        connection.execute(_RENEW, {"b_id": build_id, "until": until})


ABANDONED = (
    "its submit stopped before every source package was made (the submitting process ended or "
    "lost the database for {seconds:.0f} s): submit it again"
)


def fail_abandoned(ctx: FarmContext, now: dt.datetime) -> list[int]:
    """Fail the running builds whose packing lease ran out before ``now`` (the reaper's): their
    submit is gone, and the steps still without a key would wait forever."""
    with ctx.db.session() as session:
        expired = session.scalars(
            select(Build.id).where(Build.state == BuildState.RUNNING, Build.packing_until < now)
        ).all()
    error = ABANDONED.format(seconds=PACKING_LEASE_SECONDS)
    return [build_id for build_id in expired if _fail_build(ctx, build_id, error, expired_before=now)]


def _fail_build(
    ctx: FarmContext, build_id: int, error: str, *, expired_before: dt.datetime | None = None
) -> bool:
    """A build whose sources did not all pack fails with ``error``, under its lock: its steps not
    done yet are cancelled (a node's result of one is discarded: its lease is taken back), none
    is keyed any more and nothing is published.  The steps that were built stay built (their
    keys were whole: another build may reuse them).  ``expired_before``: only if its packing
    lease (looked at again under the lock) ran out before it.  Whether it failed the build."""
    with ctx.db.session() as session:
        build = session.get_one(Build, build_id, with_for_update=True)
        if build.state != BuildState.RUNNING:
            return False  # cancelled meanwhile: it stays so (a retry is refused while a step has no key)
        until = build.packing_until
        if expired_before is not None and (until is None or until >= expired_before):
            return False  # its submit renewed the lease, or finished packing, meanwhile
        end_build(
            session,
            build,
            BuildState.FAILED,
            error,
            "cancelled: a source package of its build could not be made",
        )
    return True
