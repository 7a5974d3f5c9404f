"""Printing for people (rich tables) and for CI (``--output json``), and the one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from buildfarm_client.models import BuildView

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

STATE_STYLE = {
    "succeeded": "green",
    "reused": "cyan",
    "running": "yellow",
    "ready": "blue",
    "pending": "dim",
    "failed": "red",
    "skipped": "magenta",
    "cancelled": "red",
    "publishing": "yellow",
}


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _plain(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if is_dataclass(data) and not isinstance(data, type):
        return asdict(data)
    return data


def emit_json(data: Any) -> None:
    """``data`` (a wire model, a dataclass, a list of them, or plain JSON) on stdout."""
    data = [_plain(d) for d in data] if isinstance(data, list) else _plain(data)
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def styled(state: str) -> str:
    style = STATE_STYLE.get(state, "")
    return f"[{style}]{state}[/]" if style else state


def steps_table(build: BuildView) -> Table:
    table = Table(
        title=f"build {build.id}  {build.project}/{build.branch}  {build.kind}  {styled(build.state)}"
    )
    for column in ("step", "version", "state", "node / wait", "attempt", "seconds", "layer", "log"):
        table.add_column(column)
    for step in build.steps:
        table.add_row(
            step.name,
            step.version,
            styled(step.state),
            step.node or step.waiting or "",
            str(step.attempt or ""),
            "" if step.duration_seconds is None else f"{step.duration_seconds:.1f}",
            step.layer or "",
            step.log or "",
        )
    return table


def builds_table(builds: list[BuildView]) -> Table:
    table = Table()
    for column in ("id", "project", "branch", "kind", "user", "state", "steps", "created"):
        table.add_column(column)
    for build in builds:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(build.counts.items()))
        table.add_row(
            str(build.id),
            build.project,
            build.branch,
            build.kind,
            build.user,
            styled(build.state),
            counts,
            build.created_at,
        )
    return table


PhaseProgress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: what long commands report while they work."""


@contextmanager
def phase_bars(
    enabled: bool, labels: Mapping[str, str], *, transient: bool
) -> Iterator[PhaseProgress | None]:
    """One progress bar per phase on stderr (``labels`` names the phases); None when disabled
    (JSON output, or work done elsewhere)."""
    if not enabled:
        yield None
        return
    width = max((len(label) for label in labels.values()), default=12)
    columns = (
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=transient) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(labels.get(phase, phase), total=total)
            bars.update(tasks[phase], completed=done, total=total)

        yield progress
