"""``buildfarm env``: this machine's build environments (list, refresh, prune).

The work is done by :mod:`buildfarm.environments`; this module parses, calls and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from buildfarm_cli.common import OutputOpt, farm_settings, state
from buildfarm_cli.output import OutputFormat, console, emit_json, err_console

if TYPE_CHECKING:  # imported when an env command runs, not for `--help` or a remote farm
    from rich.table import Table

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
    from rich.table import Table

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
    from buildfarm.model.errors import BuildfarmError
    from buildfarm.runners.builderimage import image_staleness, makes_builder_image

    settings = farm_settings()
    envs = cache_for(settings).entries()
    if state.fmt(output) == OutputFormat.JSON:
        emit_json([_view(e) for e in envs])
        return
    if not envs:
        err_console().print(
            "no build environment yet: `buildfarm env refresh` or `buildfarm start` makes one"
        )
        return
    console().print(_table(envs))
    if makes_builder_image(settings):  # a Kubernetes farm: is its package-builder image fresh?
        try:
            line = image_staleness(settings, envs)
        except BuildfarmError as exc:  # the registry down: the list still shows
            line = f"unknown ({exc})"
        console().print(f"package-builder image: {line}", markup=False)


@env_app.command("refresh")
def env_refresh(output: OutputOpt = None) -> None:
    """Make the farm's environment afresh from the mirror (security updates); builds submitted
    from now on use it.  An unchanged mirror gives the same environment, so outputs are reused.
    With the Pulp repository backend, the package cache's indexes of the mirror are synced first."""
    state.local("env refresh")
    from buildfarm.environments.upkeep import refresh_environment
    from buildfarm.wiring import make_package_cache

    settings = farm_settings()
    env, new = refresh_environment(settings, make_package_cache(settings), progress=err_console().print)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(_view(env) | {"changed": new})
        return
    what = "new" if new else "unchanged"
    console().print(f"environment {env.short} ({what}): {env.spec.describe()}", markup=False)


@env_app.command("prune")
def env_prune(
    min_age_hours: Annotated[
        float, typer.Option(min=0, help="keep environments made more recently than this (hours)")
    ] = 24.0,
    output: OutputOpt = None,
) -> None:
    """Remove environments that are not current and that no build of this farm names, and the
    dependency layers of removed environments (the scheduler does it after each retention sweep
    and each refresh)."""
    state.local("env prune")
    from buildfarm.environments.upkeep import prune_environments

    report = prune_environments(farm_settings(), min_age_seconds=min_age_hours * 3600)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json([_view(e) for e in report.environments])
        return
    console().print(report.describe(), markup=False)


BUILDER_ENTRYPOINT = Path(__file__).resolve().parents[1] / "builder" / "buildfarm-step"
"""buildtools/builder/buildfarm-step: the package-builder image's entrypoint."""


@env_app.command("image")
def env_image(
    refresh: Annotated[
        bool, typer.Option("--refresh", help="make the environment afresh first (security updates)")
    ] = False,
    entrypoint: Annotated[
        Path, typer.Option(help="the builder entrypoint (buildfarm-step)")
    ] = BUILDER_ENTRYPOINT,
    cross: Annotated[
        str | None,
        typer.Option(help="make the cross environment's image for this architecture (e.g. arm64) instead"),
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Make the package-builder image of Kubernetes builder pods from the farm's environment
    (plus python3 and ca-certificates for the entrypoint) with buildah, push it to the farm's
    registry and move the tag that ``builder_image`` names to it: builds submitted from now on
    name its digest in their input keys.  An environment already made into an image is not built
    again.  ``--cross arm64`` makes the image of the cross environment for arm64 and moves the
    tag ``<builder_image's tag>-cross-arm64``, which builder pods cross-building for arm64 use."""
    from buildfarm.runners.builderimage import make_builder_images
    from buildfarm.wiring import make_package_cache

    state.local("env image")
    settings = farm_settings()
    (made,) = make_builder_images(
        settings,
        make_package_cache(settings),
        refresh=refresh,
        cross=(cross,),
        entrypoint=entrypoint,
        progress=err_console().print,
    )
    image = made.image
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(
            {
                "image": image.reference,
                "digest": image.digest,
                "environment": image.environment,
                "built": image.built,
            }
        )
        return
    console().print(made.describe(), markup=False)
