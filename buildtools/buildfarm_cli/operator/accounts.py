"""``buildfarm admin init``: the farm's first admin and its token, straight in its database.

There is no token to call the API with yet, so this runs where the farm's settings are (the
local farm's machine, or the chart's install hook) and needs only the database, brought up to
date: no farm process has to run.
"""

from __future__ import annotations

from typing import Annotated

import typer

from buildfarm_cli.admin import print_token
from buildfarm_cli.common import OutputOpt, state


def admin_init(
    name: Annotated[str, typer.Option(help="the first admin's user name")] = "admin",
    output: OutputOpt = None,
) -> None:
    """Create the farm's first admin and print its token (local database only; once, at install)."""
    from buildfarm import accounts
    from buildfarm.local.inprocess import LocalFarm

    state.local("admin init")
    local = LocalFarm()
    try:
        created = accounts.init_admin(local.database(), name)
    finally:
        local.close()
    print_token(created, state.fmt(output))
