"""``buildfarm mirror``: the configured 3rd-party Debian repositories, and syncing one.

Mirrors are configured in the farm's settings (``BUILDFARM_MIRRORS``, a JSON list); once a
mirror is usable its apt line is added to every build's sources after the build's own packages.
On Pulp a sync copies the upstream into the farm (admins only through the API); on the local
profile builds read the upstream directly and a sync only checks that it answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from buildfarm_cli.common import OutputOpt, farm_settings, state
from buildfarm_cli.output import OutputFormat, console, emit_json, err_console

if TYPE_CHECKING:
    from buildfarm_client.models import MirrorSyncOut

mirror_app = typer.Typer(no_args_is_help=True, help="3rd-party Debian repositories mirrored into the farm.")

SYNC_TASKS = 3
"""A sync waits on three Pulp tasks (sync, publication, distribution), each bounded on the farm."""


def _default_timeout() -> float:

    return SYNC_TASKS * farm_settings().pulp.task_timeout_seconds


@mirror_app.command("list")
def mirror_list(output: OutputOpt = None) -> None:
    """The configured mirrors and, for those builds can use now, their apt line."""
    views = state.client().mirrors()
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(views)
        return
    if not views:
        err_console().print("no mirror is configured (setting mirrors, env BUILDFARM_MIRRORS)")
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column in ("name", "upstream", "suite", "components", "architectures", "apt line"):
        table.add_column(column)
    for view in views:
        cells = [
            view.name,
            view.url,
            view.distribution,
            " ".join(view.components),
            " ".join(view.architectures),
        ]
        table.add_row(*map(escape, cells), escape(view.source) if view.source else "[dim]not synced yet[/]")
    console().print(table)


@mirror_app.command("sync")
def mirror_sync(
    name: str,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=1, help="longest wait in seconds (default: 3 x pulp_task_timeout_seconds)", show_default=False
        ),
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Bring mirror NAME up to date with its upstream; builds use the new state once it is complete."""
    client = state.client()
    wait = timeout if timeout is not None else _default_timeout()
    fmt = state.fmt(output)
    if fmt == OutputFormat.TEXT:
        with err_console().status(f"syncing mirror {name} (at most {wait:.0f} s) ...", spinner="dots"):
            status = client.sync_mirror(name, wait)
    else:
        status = client.sync_mirror(name, wait)
    _print_status(status, fmt)


def _print_status(status: MirrorSyncOut, fmt: OutputFormat) -> None:
    if fmt == OutputFormat.JSON:
        emit_json(status)
        return
    err_console().print(
        f"mirror {status.name}: {status.packages} packages, version {status.version}, "
        f"{status.seconds:.1f} s; builds use:",
        markup=False,
        soft_wrap=True,
    )
    typer.echo(status.source)
