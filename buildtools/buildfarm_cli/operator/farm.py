"""``buildfarm start``, ``stop`` and ``repo verify``: the local farm's own processes, on its machine.

These reach into the farm itself (its state directory, its processes, its repository files),
not through the API: they refuse ``--farm``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from buildfarm.model.errors import PermanentError
from buildfarm_cli.common import OutputOpt, farm_settings, state
from buildfarm_cli.output import OutputFormat, console, emit_json, err_console

if TYPE_CHECKING:
    from buildfarm.model.settings import Settings


def start(
    nodes: Annotated[
        int | None, typer.Option(help="worker nodes of a farm started afresh [default: 2]")
    ] = None,
    runner: Annotated[
        str | None,
        typer.Option(
            help="sbuild (clean chroot), unshare (clean chroot, a builder pod's command: less setup) "
            "or host (fast, dpkg-buildpackage here)"
        ),
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Start the local farm in the background (Redis, repository server, nodes, scheduler).

    On a farm of which some processes still run, start only the missing ones, as they were:
    running builds, healthy processes and the broker's data are left alone.
    """
    from buildfarm.local import farm

    state.local("start")
    overrides: dict[str, object] = {"runner": runner} if runner else {}
    settings = farm_settings(**overrides)
    if not farm.any_alive(settings):
        farm.forget_runtime(settings)  # a farm started afresh decides again what runs where
        settings = farm_settings(**overrides)

    def prepare(s: Settings) -> None:
        env = s.buildenv
        if s.builders.runner in ("sbuild", "unshare") and env.base_tarball is not None:
            from buildfarm.runners.sbuild import ensure_base_tarball

            ensure_base_tarball(env.base_tarball, env.distribution, env.mirror, progress=err_console().print)
        elif s.builders.runner in ("sbuild", "unshare"):
            from buildfarm.environments import routed_environments
            from buildfarm.wiring import make_package_cache

            cache, spec = routed_environments(s, make_package_cache(s))
            cache.ensure(spec, progress=err_console().print)

    result = farm.start(settings, nodes=nodes, prepare=prepare, runner=runner)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(result)
        return
    for warning in result.warnings:
        err_console().print(f"note: {warning}", markup=False, soft_wrap=True)
    started = set(result.started)
    if not started:
        what = "already running"
    elif started == set(result.processes):
        what = "running"
    else:
        what = "running again (started: " + ", ".join(result.started) + ")"
    console().print(
        f"farm {what} in {result.state_dir}: runner {result.runner}, nodes "
        + ", ".join(n for n in result.nodes if n != farm.SCHEDULER)
        + f"; repositories at {result.repo_url}",
        markup=False,
    )
    console().print("stop it with: buildfarm stop")


def stop(output: OutputOpt = None) -> None:
    """Stop every process of the local farm (its data stays in the state directory)."""
    from buildfarm.local import farm

    state.local("stop")
    stopped = farm.stop(farm_settings())
    if state.fmt(output) == OutputFormat.JSON:
        emit_json({"stopped": stopped})
    else:
        console().print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def repo_verify(
    project: str,
    branch: str,
    build: Annotated[int | None, typer.Option(help="a specific build instead of latest")] = None,
    output: OutputOpt = None,
) -> None:
    """apt-get update and download every package of latest (or one build); compare with what was built."""
    from buildfarm.dispatch.context import make_context
    from buildfarm.local import farm
    from buildfarm.local.aptverify import verify

    state.local("repo verify")
    settings = farm_settings()
    if not farm.was_started(settings):
        raise PermanentError(f"no local farm in {settings.state_dir}: run `buildfarm start`")
    results = verify(make_context(settings), project, branch, build)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(results)
    else:
        for item in results:
            mark = "[green]identical[/]" if item.identical else "[red]DIFFERS[/]"
            console().print(f"  apt-get download {item.package}: {item.filename} {mark}")
    if not all(item.identical for item in results):
        raise typer.Exit(1)
