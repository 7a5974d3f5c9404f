"""``buildfarm schedule``: the farm's scheduled (nightly) builds, when they run next, how the last went.

Schedules are configuration (setting ``schedules``, ``BUILDFARM_SCHEDULES`` as JSON, or the
chart's ``farm.schedules.builds``); the farm's one scheduler starts them.  Times are UTC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from buildfarm_cli.common import OutputOpt, state
from buildfarm_cli.output import OutputFormat, console, emit_json, err_console, styled

if TYPE_CHECKING:
    from buildfarm_client.models import ScheduleOut

schedule_app = typer.Typer(no_args_is_help=True, help="Scheduled (nightly) builds.")


def _when(iso: str | None) -> str:
    """``2025-03-04T02:00:00+00:00`` as ``2025-03-04 02:00``."""
    return iso.replace("T", " ")[:16] if iso else ""


@schedule_app.command("list")
def schedule_list(output: OutputOpt = None) -> None:
    """Each schedule, its next run (UTC) and its last run: slot, build, state, error."""
    views = state.client().schedules()
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(views)
        return
    if not views:
        err_console().print("no schedule is configured (setting schedules, env BUILDFARM_SCHEDULES)")
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column in ("name", "project/branch", "kind", "user", "cron", "next run (UTC)", "last slot", "build"):
        table.add_column(column)
    table.add_column("state / error", overflow="fold")
    for view in views:
        table.add_row(
            *map(
                escape,
                (
                    view.name,
                    f"{view.project}/{view.branch}",
                    view.kind,
                    view.user,
                    view.cron,
                    _when(view.next_run),
                    _when(view.last_slot),
                    "" if view.last_build is None else str(view.last_build),
                ),
            ),
            _outcome(view),
        )
    console().print(table)


def _outcome(view: ScheduleOut) -> str:
    """started: the build's state; else starting / retrying (attempt k of n, next at ...) / failed."""
    from rich.markup import escape

    error = escape(view.last_error or "")
    attempt = f"attempt {view.last_attempt} of {view.max_attempts}"
    if view.last_state == "retrying":
        return f"[yellow]retrying ({attempt} failed, next at {_when(view.retry_at)})[/]: {error}"
    if view.last_state == "failed" or (view.last_error and view.last_state is None):
        after = f" after {view.last_attempt} attempts" if (view.last_attempt or 0) > 1 else ""
        return f"[red]failed{after}: {error}[/]"
    if view.last_state == "starting" and (view.last_attempt or 0) > 1:
        return f"starting ({attempt})"
    outcome = styled(view.last_state) if view.last_state else ""
    return f"{outcome} [red]{error}[/]" if error else outcome
