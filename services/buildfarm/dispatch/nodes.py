"""What this node is: the labels it advertises, and its row in the nodes table (heartbeat).

The labels are found once per process: the architectures dpkg builds for (``dpkg
--print-architecture`` and ``--print-foreign-architectures``), the builder kinds its runner
offers, its CPU and memory class, and the custom labels of setting ``node_labels`` (the chart's
``worker.nodeLabels``).  A worker records them with ``last_seen`` every
``node_heartbeat_seconds`` (:func:`report_node`), which is how the engine knows which node can
run a step that requires labels (:mod:`buildfarm.engine.routing`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from functools import cache

from buildfarm.engine import routing
from buildfarm.engine.context import FarmContext
from buildfarm.model.labels import node_labels
from buildfarm.model.settings import Settings

log = logging.getLogger(__name__)

DPKG_SECONDS = 10
"""dpkg answers in milliseconds; a bound so a broken one cannot hold a worker's start."""


def _dpkg(*args: str) -> list[str]:
    if shutil.which("dpkg") is None:
        return []
    try:
        done = subprocess.run(
            ["dpkg", *args], capture_output=True, text=True, timeout=DPKG_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.split() if done.returncode == 0 else []


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def builder_kinds(settings: Settings) -> list[str]:
    """The builder kinds this node's runners offer (package steps and image steps)."""
    runner = settings.builders.runner
    if runner == "kubernetes":
        return ["kubernetes", "kaniko"] + (["sysbox"] if settings.builders.runtime_class else [])
    return [runner] + (["buildah"] if shutil.which("buildah") else [])


def this_node_labels(settings: Settings) -> frozenset[str]:
    return _labels(tuple(builder_kinds(settings)), tuple(settings.builders.labels))


@cache  # one look at dpkg and /proc per process
def _labels(builders: tuple[str, ...], custom: tuple[str, ...]) -> frozenset[str]:
    architectures = _dpkg("--print-architecture") + _dpkg("--print-foreign-architectures")
    return node_labels(architectures, builders, os.cpu_count() or 1, _memory_gib(), custom)


def report_node(ctx: FarmContext, name: str) -> None:
    routing.record_node(ctx, name, sorted(this_node_labels(ctx.settings)))


class NodeHeartbeat(threading.Thread):
    """Records this node every ``node_heartbeat_seconds`` while the worker lives."""

    def __init__(self, ctx: FarmContext, name: str) -> None:
        super().__init__(name="node-heartbeat", daemon=True)
        self.ctx, self.node = ctx, name
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                report_node(self.ctx, self.node)
            except Exception:  # the database is down: the next beat tries again
                log.exception("node %s: heartbeat not recorded", self.node)
            if self.stopped.wait(self.ctx.settings.steps.node_heartbeat_seconds):
                return
