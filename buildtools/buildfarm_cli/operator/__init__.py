"""The operator's commands: they run where the farm is, on its settings, never through the API.

``start``, ``stop``, ``node``, ``backup`` (run, verify, restore), ``admin init`` and ``repo
verify`` work on this machine's farm (or, for ``backup``, inside the farm's pod) and refuse
``--farm``; every other command is a user's and goes through the farm client, which is the
REST API with ``--farm``.  :func:`register` puts them under their usual names.
"""

from __future__ import annotations

import typer

from buildfarm_cli.operator.accounts import admin_init
from buildfarm_cli.operator.backup import backup_app
from buildfarm_cli.operator.farm import repo_verify, start, stop
from buildfarm_cli.operator.nodes import node_app


def register(
    app: typer.Typer, groups: dict[str, typer.Typer], repo_app: typer.Typer, admin_app: typer.Typer
) -> None:
    """The operator's commands on the CLI's ``app`` and among its ``groups`` (``repo verify`` on
    ``repo_app``, ``admin init`` on ``admin_app``)."""
    app.command()(start)
    app.command()(stop)
    groups["node"] = node_app
    groups["backup"] = backup_app
    repo_app.command("verify")(repo_verify)
    admin_app.command("init")(admin_init)
