"""The farm's Prometheus series, read from the build-state database at scrape time.

The database is the truth about builds and steps, so the API computes these series from it on
every scrape instead of counting events in memory: a restarted API, several API replicas, or a
worker that died mid-step all report the same numbers.  Series over history (builds by
outcome, step-duration histograms, re-runs) count the rows the database still holds: retention
deleting old builds makes them drop, which Prometheus takes as a counter reset (``rate()`` and
``increase()`` handle it).  Every scrape costs a handful of aggregate queries, no row scans in
Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, Float, case, cast, func, select
from sqlalchemy.orm import Session

from buildfarm.model.types import OutputKind
from buildfarm.state.db import Database
from buildfarm.state.models import (
    Build,
    Step,
    StepOutput,
    StepState,
    TaskRun,
    Upload,
)

DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
"""Step build time, seconds: a tiny package builds in seconds, a large one in an hour or two."""
WAIT_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""From ready to a node starting it, seconds: under a second on an idle farm, minutes when busy."""
PERIODIC_TASKS = ("retention", "backup", "env_refresh")

NodesOnline = Callable[[], Iterable[str]]
"""The Celery nodes answering now (the API's cached ping); the database knows only busy ones."""
QueueLengths = Callable[[], dict[str, int]]
"""Messages waiting in each broker queue."""


def _seconds(session: Session, later: Any, earlier: Any) -> ColumnElement[float]:
    """``later - earlier`` in seconds, in the dialect's own date arithmetic."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return cast(func.extract("epoch", later - earlier), Float)


def _histogram(
    session: Session, seconds: ColumnElement[float], buckets: Sequence[float], *where: Any
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative bucket counts and the sum of ``seconds`` over the rows ``where`` selects."""
    columns: list[ColumnElement[Any]] = [
        func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0) for bound in buckets
    ]
    columns += [func.count(), func.coalesce(func.sum(seconds), 0.0)]
    row = session.execute(select(*columns).select_from(Step).where(*where)).one()
    counts = [(repr(float(b)), float(row[i])) for i, b in enumerate(buckets)]
    counts.append(("+Inf", float(row[len(buckets)])))
    return counts, float(row[len(buckets) + 1])


class FarmCollector(Collector):
    """Farm-wide series (``buildfarm_*``) for the API's ``/metrics``."""

    def __init__(
        self,
        db: Database,
        nodes_online: NodesOnline | None = None,
        queue_lengths: QueueLengths | None = None,
    ) -> None:
        self.db = db
        self.nodes_online = nodes_online
        self.queue_lengths = queue_lengths

    def collect(self) -> Iterator[Any]:
        with self.db.session() as session:
            yield from self._steps(session)
            yield from self._builds(session)
            yield from self._durations(session)
            yield from self._nodes(session)
            yield from self._storage(session)
            yield from self._task_runs(session)
        if self.queue_lengths is not None:
            broker = GaugeMetricFamily(
                "buildfarm_broker_queue_messages", "Messages waiting in each broker queue", labels=["queue"]
            )
            for queue, length in sorted(self.queue_lengths().items()):
                broker.add_metric([queue], length)
            yield broker

    def _steps(self, session: Session) -> Iterator[Any]:
        states = GaugeMetricFamily(
            "buildfarm_steps",
            "Steps in the database by state (reused: succeeded from another's outputs)",
            labels=["state"],
        )
        counts = dict.fromkeys([s.value for s in StepState], 0)
        for state, count in session.execute(select(Step.state, func.count()).group_by(Step.state)):
            counts[str(state)] = int(count)
        reused = int(
            session.scalar(
                select(func.count())
                .select_from(Step)
                .where(Step.state == StepState.SUCCEEDED, Step.reused_from.is_not(None))
            )
            or 0
        )
        for name, number in sorted(counts.items()):
            states.add_metric([name], number)
        states.add_metric(["reused"], reused)
        yield states

        ratio = GaugeMetricFamily(
            "buildfarm_reuse_ratio",
            "Of the succeeded steps in the database, the share reused instead of built",
        )
        succeeded = counts[StepState.SUCCEEDED.value]
        ratio.add_metric([], reused / succeeded if succeeded else 0.0)
        yield ratio

        queued = GaugeMetricFamily(
            "buildfarm_queue_depth",
            "Steps ready and waiting for a node, by build class (kind) and tenant (project)",
            labels=["kind", "project"],
        )
        for kind, project, count in session.execute(
            select(Build.kind, Build.project, func.count())
            .join(Step, Step.build_id == Build.id)
            .where(Step.state == StepState.READY)
            .group_by(Build.kind, Build.project)
            .order_by(Build.kind, Build.project)
        ):
            queued.add_metric([str(kind), str(project)], int(count))
        yield queued

        reruns = CounterMetricFamily(
            "buildfarm_step_reruns",
            "Attempts beyond the first, over the steps in the database (lease expiries, lost builders, "
            "killed builds, retries)",
        )
        reruns.add_metric(
            [],
            float(
                session.scalar(select(func.coalesce(func.sum(Step.attempt - 1), 0)).where(Step.attempt > 1))
                or 0
            ),
        )
        yield reruns

    def _builds(self, session: Session) -> Iterator[Any]:
        builds = GaugeMetricFamily(
            "buildfarm_builds",
            "Builds in the database by kind and state (outcome, once finished)",
            labels=["kind", "state"],
        )
        for kind, state, count in session.execute(
            select(Build.kind, Build.state, func.count())
            .group_by(Build.kind, Build.state)
            .order_by(Build.kind, Build.state)
        ):
            builds.add_metric([str(kind), str(state)], int(count))
        yield builds

    def _durations(self, session: Session) -> Iterator[Any]:
        built = (
            Step.started_at.is_not(None),
            Step.finished_at.is_not(None),
            Step.reused_from.is_(None),
            Step.state.in_([StepState.SUCCEEDED, StepState.FAILED]),
        )
        duration = HistogramMetricFamily(
            "buildfarm_step_duration_seconds",
            "Time a node spent on a step's last attempt, over the steps built (not reused) in the database",
            labels=["state"],
        )
        seconds = _seconds(session, Step.finished_at, Step.started_at)
        for state in (StepState.SUCCEEDED, StepState.FAILED):
            buckets, total = _histogram(session, seconds, DURATION_BUCKETS, *built, Step.state == state)
            duration.add_metric([state.value], buckets, total)
        yield duration

        wait = HistogramMetricFamily(
            "buildfarm_step_setup_seconds",
            "Setup time: from a step's last release to the queue (ready) until a node started it",
        )
        buckets, total = _histogram(
            session,
            _seconds(session, Step.started_at, Step.ready_at),
            WAIT_BUCKETS,
            Step.started_at.is_not(None),
            Step.ready_at.is_not(None),
            Step.reused_from.is_(None),
        )
        wait.add_metric([], buckets, total)
        yield wait

    def _nodes(self, session: Session) -> Iterator[Any]:
        busy = GaugeMetricFamily(
            "buildfarm_node_running_steps", "Steps each node holds the lease of", labels=["node"]
        )
        running = {
            str(node): int(count)
            for node, count in session.execute(
                select(Step.node, func.count())
                .where(Step.state == StepState.RUNNING, Step.node.is_not(None))
                .group_by(Step.node)
            )
        }
        online = set(self.nodes_online()) if self.nodes_online is not None else set()
        for node in sorted(online | set(running)):
            busy.add_metric([node], running.get(node, 0))
        yield busy
        if self.nodes_online is not None:
            up = GaugeMetricFamily(
                "buildfarm_node_online", "1 for each Celery node answering a ping", labels=["node"]
            )
            for node in sorted(online | set(running)):
                up.add_metric([node], 1 if node in online else 0)
            yield up

    def _storage(self, session: Session) -> Iterator[Any]:
        stored = GaugeMetricFamily(
            "buildfarm_storage_bytes",
            "Output bytes by build class (kind), counted where made; uploads: sources not built",
            labels=["kind"],
        )
        for kind, size in session.execute(
            select(Build.kind, func.coalesce(func.sum(StepOutput.size), 0))
            .select_from(StepOutput)
            .join(Step, Step.id == StepOutput.step_id)
            .join(Build, Build.id == Step.build_id)
            .where(StepOutput.kind != OutputKind.IMAGE)
            .group_by(Build.kind)
            .order_by(Build.kind)
        ):
            stored.add_metric([str(kind)], int(size))
        stored.add_metric(
            ["uploads"], int(session.scalar(select(func.coalesce(func.sum(Upload.size), 0))) or 0)
        )
        yield stored

    def _task_runs(self, session: Session) -> Iterator[Any]:
        last = GaugeMetricFamily(
            "buildfarm_task_last_run_timestamp_seconds",
            "When the newest run of a periodic task ended",
            labels=["task"],
        )
        success = GaugeMetricFamily(
            "buildfarm_task_last_success_timestamp_seconds",
            "When the newest successful run ended",
            labels=["task"],
        )
        ok = GaugeMetricFamily("buildfarm_task_last_run_ok", "1 if the newest run succeeded", labels=["task"])
        moved = GaugeMetricFamily(
            "buildfarm_task_last_run_bytes",
            "Bytes the newest run freed (retention, env_refresh: pruned environments and layers) or "
            "copied (backup)",
            labels=["task"],
        )
        for task in PERIODIC_TASKS:
            newest = session.scalars(
                select(TaskRun).where(TaskRun.task == task).order_by(TaskRun.finished_at.desc()).limit(1)
            ).first()
            if newest is None:
                continue
            last.add_metric([task], newest.finished_at.timestamp())
            ok.add_metric([task], 1 if newest.ok else 0)
            moved.add_metric([task], newest.bytes)
            good = session.scalar(
                select(func.max(TaskRun.finished_at)).where(TaskRun.task == task, TaskRun.ok.is_(True))
            )
            if good is not None:
                success.add_metric([task], good.timestamp())
        yield from (last, success, ok, moved)
