"""``buildfarm node start/stop/list``: the local farm's nodes one by one, the rest left running."""

from __future__ import annotations

from typing import Annotated

import typer

from buildfarm_cli.common import OutputOpt, farm_settings, state
from buildfarm_cli.output import OutputFormat, console, emit_json

node_app = typer.Typer(no_args_is_help=True, help="Nodes of the local farm: start, stop, list.")

NameArg = Annotated[str, typer.Argument(help="node name, e.g. node2")]


@node_app.command("start")
def node_start(name: NameArg, output: OutputOpt = None) -> None:
    """Start node NAME as it was (a new NAME adds a node to the farm); nothing else is touched."""
    from buildfarm.local.nodes import start_node

    state.local("node start")
    change = start_node(farm_settings(), name)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(change)
    else:
        console().print(f"{name}: {'started' if change.changed else 'already running'}", markup=False)


@node_app.command("stop")
def node_stop(name: NameArg, output: OutputOpt = None) -> None:
    """Stop node NAME and keep it stopped (`buildfarm start` leaves it); its steps go elsewhere."""
    from buildfarm.local.nodes import stop_node

    state.local("node stop")
    change = stop_node(farm_settings(), name)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(change)
    else:
        console().print(f"{name}: {'stopped' if change.changed else 'was not running'}", markup=False)


@node_app.command("list")
def node_list(output: OutputOpt = None) -> None:
    """Every node of the local farm: running, stopped on purpose, or dead."""
    from buildfarm.local.nodes import list_nodes

    state.local("node list")
    nodes = list_nodes(farm_settings())
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(nodes)
        return
    from rich.table import Table

    table = Table()
    for column in ("node", "state", "pid", "online", "active tasks"):
        table.add_column(column)
    for node in nodes:
        table.add_row(
            node.name,
            node.state if node.state != "dead" else "[red]dead[/] (buildfarm start)",
            str(node.pid or "-"),
            "yes" if node.online else "no",
            str(node.active_tasks),
        )
    console().print(table)
