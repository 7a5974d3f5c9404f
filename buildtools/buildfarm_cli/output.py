"""Printing for people (rich tables) and for CI (``--output json``), and the one-line errors.

rich is imported by the first command that prints with it: a command printing JSON (what CI
runs) does not need its consoles and tables (0.04 s of CPU of every command before).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the wire models and rich: imported by the commands that use them
    from rich.console import Console
    from rich.progress import TaskID
    from rich.table import Table

    from buildfarm_client.models import BuildView


@functools.cache
def console() -> Console:
    """The console on stdout, made on first use."""
    from rich.console import Console

    return Console(highlight=False)


@functools.cache
def err_console() -> Console:
    """The console on stderr, made on first use."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


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
    from pydantic import BaseModel

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


STEP_COLUMNS = ("step", "version", "state", "node / wait", "attempt", "seconds", "layer", "log")
DROPPED_FIRST = ("log", "attempt", "version", "layer")
"""What a narrow terminal loses, in this order, rather than cutting names short (`make demo`
prints at 80 columns when its output is not a terminal); ``--output json`` has every field."""
FOLDED_MIN = 24
"""Width below which a folding column (why a step waits, its log) is not worth showing."""


def _cells(text: str) -> int:
    from rich.text import Text

    return Text.from_markup(text).cell_len


def steps_table(build: BuildView, width: int | None = None) -> Table:
    """The build's steps, one row each.  Names, versions, states and layers are never cut; the
    long columns (why it waits, the log) fold; a ``width`` too narrow for all of them drops the
    columns of :data:`DROPPED_FIRST` and says so in the caption."""
    rows = [
        {
            "step": step.name,
            "version": step.version,
            "state": styled(step.state),
            "node / wait": step.node or step.waiting or "",
            "attempt": str(step.attempt or ""),
            "seconds": "" if step.duration_seconds is None else f"{step.duration_seconds:.1f}",
            "layer": short_layer(step.layer),
            "log": step.log or "",
        }
        for step in build.steps
    ]

    def needed(column: str) -> int:
        widest = max((_cells(row[column]) for row in rows), default=0)
        if column in ("node / wait", "log"):
            widest = min(widest, FOLDED_MIN)
        return max(widest, len(column)) + 3  # its padding and one border

    from rich.table import Table

    columns = [c for c in STEP_COLUMNS if c != "layer" or any(row["layer"] for row in rows)]
    dropped: list[str] = []
    for column in DROPPED_FIRST:
        if width is None or sum(needed(c) for c in columns) + 1 <= width:
            break
        if column in columns:
            columns.remove(column)
            dropped.append(column)
    table = Table(
        title=f"build {build.id}  {build.project}/{build.branch}  {build.kind}  {styled(build.state)}",
        caption=f"({', '.join(dropped)}: left out of a narrow terminal; --output json has every field)"
        if dropped
        else None,
    )
    for column in columns:
        if column in ("node / wait", "log"):
            table.add_column(column, overflow="fold", min_width=len(column))
        else:
            table.add_column(column, no_wrap=True, min_width=needed(column) - 3)
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


LAYER_KEY_CHARS = 12
"""Characters of a layer's key a table shows (``--output json`` gives it whole)."""


def short_layer(layer: str | None) -> str:
    """``hit:<64 hex>`` as ``hit:<12 hex>``: enough to tell two layers apart in one build."""
    if not layer:
        return ""
    outcome, sep, key = layer.partition(":")
    return f"{outcome}{sep}{key[:LAYER_KEY_CHARS]}"


def builds_table(builds: list[BuildView]) -> Table:
    from rich.table import Table

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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    width = max((len(label) for label in labels.values()), default=12)
    columns = (
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console(), transient=transient) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(labels.get(phase, phase), total=total)
            bars.update(tasks[phase], completed=done, total=total)

        yield progress
