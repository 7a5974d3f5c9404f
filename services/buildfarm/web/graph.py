"""The step graph and the Gantt chart of a build, laid out server-side for SVG templates.

Layout is deliberately simple and linear in the number of steps: a step's column is the length
of its longest chain of dependencies, its row its place in that column.  The critical path is
the chain with the largest total build time (a reused step costs nothing, an unfinished one
counts as running until now), which is where a faster build must be won.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from buildfarm_client.models import StepView

BOX_WIDTH = 170
BOX_HEIGHT = 30
COLUMN_GAP = 50
ROW_GAP = 12
MARGIN = 10
GANTT_WIDTH = 900
GANTT_ROW = 26
GANTT_LABEL = 110


@dataclass
class Box:
    name: str
    state: str
    x: int
    y: int
    critical: bool
    title: str


@dataclass
class Edge:
    x1: int
    y1: int
    x2: int
    y2: int
    critical: bool


@dataclass
class Graph:
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    critical: list[str] = field(default_factory=list)
    critical_seconds: float = 0.0


def _parse(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _cost(step: StepView, now: dt.datetime) -> float:
    if step.duration_seconds is not None:
        return step.duration_seconds
    started = _parse(step.started_at)
    if started is not None and step.state == "running":
        return max(0.0, (now - started).total_seconds())
    return 0.0


def step_graph(steps: list[StepView], now: dt.datetime) -> Graph:
    by_name = {s.name: s for s in steps}
    deps = {s.name: [d for d in s.depends_on if d in by_name] for s in steps}
    depth: dict[str, int] = {}
    for name in sorted(by_name, key=lambda n: len(deps[n])):
        _depth(name, deps, depth)
    order = sorted(by_name, key=lambda n: (depth[n], n))

    # the critical path: longest total cost over dependency chains (order is topological)
    best: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for name in order:
        before = max(deps[name], key=lambda d: best[d], default=None)
        best[name] = _cost(by_name[name], now) + (best[before] if before else 0.0)
        via[name] = before
    path: list[str] = []
    tail = max(order, key=lambda n: best[n], default=None)
    while tail is not None:
        path.append(tail)
        tail = via[tail]
    path.reverse()
    on_path = set(path)

    rows: dict[int, int] = {}
    where: dict[str, tuple[int, int]] = {}
    graph = Graph(0, 0, critical=path, critical_seconds=round(best[path[-1]], 1) if path else 0.0)
    for name in order:
        column = depth[name]
        row = rows.get(column, 0)
        rows[column] = row + 1
        x = MARGIN + column * (BOX_WIDTH + COLUMN_GAP)
        y = MARGIN + row * (BOX_HEIGHT + ROW_GAP)
        where[name] = (x, y)
        step = by_name[name]
        title = f"{name} {step.version}: {step.state}"
        if step.duration_seconds is not None:
            title += f", {step.duration_seconds:g} s"
        if step.node:
            title += f" on {step.node}"
        graph.boxes.append(Box(name, step.state, x, y, name in on_path, title))
    for name in order:
        x2, y2 = where[name]
        for dep in deps[name]:
            x1, y1 = where[dep]
            critical = name in on_path and dep in on_path and via[name] == dep
            graph.edges.append(Edge(x1 + BOX_WIDTH, y1 + BOX_HEIGHT // 2, x2, y2 + BOX_HEIGHT // 2, critical))
    columns = max(depth.values(), default=-1) + 1
    graph.width = 2 * MARGIN + columns * BOX_WIDTH + max(0, columns - 1) * COLUMN_GAP
    graph.height = 2 * MARGIN + max(rows.values(), default=0) * (BOX_HEIGHT + ROW_GAP)
    return graph


def _depth(name: str, deps: dict[str, list[str]], memo: dict[str, int]) -> int:
    """Longest chain of dependencies below ``name`` (iterative: deep chains do not recurse)."""
    stack = [name]
    while stack:
        top = stack[-1]
        if top in memo:
            stack.pop()
            continue
        missing = [d for d in deps[top] if d not in memo]
        if missing:
            stack.extend(missing)
            continue
        memo[top] = 1 + max((memo[d] for d in deps[top]), default=-1)
        stack.pop()
    return memo[name]


@dataclass
class Bar:
    name: str
    state: str
    x: float
    width: float
    title: str


@dataclass
class Lane:
    node: str
    y: int
    bars: list[Bar] = field(default_factory=list)


@dataclass
class Gantt:
    width: int
    height: int
    seconds: float
    lanes: list[Lane] = field(default_factory=list)


def gantt(steps: list[StepView], now: dt.datetime) -> Gantt:
    """One lane per node, one bar per built step (reused steps ran nowhere)."""
    timed = [
        (s, start, _parse(s.finished_at) or now)
        for s in steps
        if s.node and s.reused_from is None and (start := _parse(s.started_at)) is not None
    ]
    if not timed:
        return Gantt(GANTT_WIDTH, 0, 0.0)
    first = min(start for _, start, _ in timed)
    last = max(end for _, _, end in timed)
    span = max((last - first).total_seconds(), 1.0)
    scale = (GANTT_WIDTH - GANTT_LABEL - MARGIN) / span
    nodes = sorted({s.node for s, _, _ in timed if s.node})
    lanes = {n: Lane(n, MARGIN + i * GANTT_ROW) for i, n in enumerate(nodes)}
    for step, start, end in sorted(timed, key=lambda t: t[1]):
        assert step.node is not None
        seconds = (end - start).total_seconds()
        lanes[step.node].bars.append(
            Bar(
                step.name,
                step.state,
                round(GANTT_LABEL + (start - first).total_seconds() * scale, 1),
                round(max(seconds * scale, 2.0), 1),
                f"{step.name}: {step.state}, {seconds:.1f} s on {step.node}",
            )
        )
    return Gantt(GANTT_WIDTH, 2 * MARGIN + len(nodes) * GANTT_ROW, round(span, 1), list(lanes.values()))
