"""``buildfarm env``: this machine's build environments (list, refresh, prune).

The work is done by :mod:`buildfarm.environments`; this module parses, calls and prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from buildfarm.model.settings import load_settings
from buildfarm_cli.common import OutputOpt, state
from buildfarm_cli.output import OutputFormat, console, emit_json, err_console

if TYPE_CHECKING:  # imported when an env command runs, not for `--help` or a remote farm
    from buildfarm.environments import Environment

env_app = typer.Typer(no_args_is_help=True, help="Build environments: cached toolchain tarballs.")


def _view(env: Environment) -> dict[str, object]:
    return {
        "digest": env.digest,
        "current": env.current,
        "created": env.created,
        "size": env.size,
        "mirror_date": env.mirror_date,
        "distribution": env.spec.distribution,
        "architecture": env.spec.architecture,
        "mirror": env.spec.mirror,
        "packages": list(env.spec.packages),
        "path": str(env.path),
    }


def _table(envs: list[Environment]) -> Table:
    table = Table()
    for column in ("digest", "current", "created", "MiB", "mirror date", "recipe"):
        table.add_column(column)
    for env in envs:
        table.add_row(
            env.short,
            "yes" if env.current else "",
            env.created,
            str(env.size >> 20),
            env.mirror_date or "-",
            env.spec.describe(),
        )
    return table


@env_app.command("list")
def env_list(output: OutputOpt = None) -> None:
    """The environments in this machine's cache, newest first (current: new builds use it)."""
    state.local("env list")
    from buildfarm.environments import cache_for

    envs = cache_for(load_settings()).entries()
    if state.fmt(output) == OutputFormat.JSON:
        emit_json([_view(e) for e in envs])
        return
    if not envs:
        err_console.print("no build environment yet: `buildfarm env refresh` or `buildfarm start` makes one")
        return
    console.print(_table(envs))


@env_app.command("refresh")
def env_refresh(output: OutputOpt = None) -> None:
    """Make the farm's environment afresh from the mirror (security updates); builds submitted
    from now on use it.  An unchanged mirror gives the same environment, so outputs are reused."""
    state.local("env refresh")
    from buildfarm.environments import cache_for, spec_for

    settings = load_settings()
    cache = cache_for(settings)
    before = {e.digest for e in cache.entries() if e.current}
    env = cache.refresh(spec_for(settings), progress=err_console.print)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(_view(env) | {"changed": env.digest not in before})
        return
    what = "unchanged" if env.digest in before else "new"
    console.print(f"environment {env.short} ({what}): {env.spec.describe()}", markup=False)


@env_app.command("prune")
def env_prune(
    min_age_hours: Annotated[
        float, typer.Option(min=0, help="keep environments made more recently than this (hours)")
    ] = 24.0,
    output: OutputOpt = None,
) -> None:
    """Remove environments that are not current and that no build of this farm names."""
    state.local("env prune")
    from buildfarm.environments import cache_for, digests_named_by_builds

    settings = load_settings()
    removed = cache_for(settings).prune(
        digests_named_by_builds(settings), min_age_seconds=min_age_hours * 3600
    )
    if state.fmt(output) == OutputFormat.JSON:
        emit_json([_view(e) for e in removed])
        return
    freed = sum(e.size for e in removed) >> 20
    console.print(f"removed {len(removed)} environment(s), {freed} MiB", markup=False)
