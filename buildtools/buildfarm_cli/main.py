"""``buildfarm``: builds, logs and apt sources of a farm; start/stop of the local farm; accounts.

Without ``--farm`` (or ``BUILDFARM_URL``, or ``url:`` in the client file) every command works
on the local farm in the state directory; with it, ``build``, ``repo sources``, ``status`` and
``admin`` (except ``admin init``) go through the farm's REST API.  Either way the output and the
exit codes are the same.  The commands that run the farm itself (start, stop, node, backup,
repo verify) are the operator's: :mod:`buildfarm_cli.operator`.

Exit codes: 0 done; 1 the request was wrong or the build failed; 2 usage; 3 a service the
farm needs is unreachable (trying again later may help).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from buildfarm.model.errors import BuildfarmError, TemporaryError
from buildfarm.model.types import TERMINAL_BUILD_STATES, BuildKind, BuildState
from buildfarm_cli import operator
from buildfarm_cli.admin import admin_app
from buildfarm_cli.common import OutputOpt, state
from buildfarm_cli.env import env_app
from buildfarm_cli.groups import with_groups
from buildfarm_cli.lifecycle import retention_app, storage_app
from buildfarm_cli.mirror import mirror_app
from buildfarm_cli.output import (
    OutputFormat,
    builds_table,
    console,
    emit_json,
    err_console,
    steps_table,
)
from buildfarm_cli.schedule import schedule_app
from buildfarm_cli.views import summary_dict

if TYPE_CHECKING:  # what a command asks a farm for is imported when it does (buildfarm_cli.common)
    from buildfarm_cli.client import FarmClient
    from buildfarm_client.models import BuildView

build_app = typer.Typer(no_args_is_help=True, help="Submit, follow and manage builds.")
repo_app = typer.Typer(no_args_is_help=True, help="Published package repositories.")
groups = {
    "build": build_app,
    "repo": repo_app,
    "admin": admin_app,
    "mirror": mirror_app,
    "schedule": schedule_app,
    "retention": retention_app,
    "storage": storage_app,
    "env": env_app,
}
"""The groups of commands, each made when a command line names it (:mod:`buildfarm_cli.groups`)."""
app = typer.Typer(
    cls=with_groups(groups),
    no_args_is_help=True,
    add_completion=False,
    help=__doc__,
    pretty_exceptions_enable=False,
)
operator.register(app, groups, repo_app, admin_app)

WAIT_POLL_SECONDS = 0.5
"""Least time between two asks of a follower whose farm answered at once with nothing new."""
LONG_POLL_SECONDS = 20.0
"""How long the farm may hold one ask of ``--wait`` before answering that nothing changed."""
LOG_POLL_SECONDS = 0.5


@app.callback()
def main(
    ctx: typer.Context,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="text for people, json for CI")
    ] = OutputFormat.TEXT,
    state_dir: Annotated[
        Path | None, typer.Option(help="local farm state directory [env: BUILDFARM_STATE_DIR]")
    ] = None,
    farm_url: Annotated[
        str | None,
        typer.Option(
            "--farm",
            help="the farm's API URL, e.g. http://farm:8781 (env BUILDFARM_URL; token from BUILDFARM_TOKEN); "
            "default: the local farm",
        ),
    ] = None,
) -> None:
    state.output = output
    state.farm_flag = farm_url
    if state_dir is not None:
        os.environ["BUILDFARM_STATE_DIR"] = str(state_dir.resolve())
    ctx.call_on_close(state.close)


@app.command()
def status(output: OutputOpt = None) -> None:
    """Nodes, queues and running steps of the farm."""
    client = state.client()
    result = client.status()
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(result)
        return
    if not result.get("running", True):
        processes = result.get("processes")
        console().print(
            f"farm {client.where} is not running" + (f" (partly: {processes})" if processes else "")
        )
        raise typer.Exit(1)
    details = [f"runner {result['runner']}"] if result.get("runner") else []
    if result.get("repo_url"):
        details.append(f"repositories at {result['repo_url']}")
    console().print(f"farm {client.where}" + (": " + ", ".join(details) if details else ""))
    for node, info in (result.get("nodes") or {}).items():
        if info.get("stopped"):
            console().print(f"  {node}: stopped (buildfarm node start {node})", markup=False)
            continue
        console().print(
            f"  {node}: {'online' if info.get('online') else '[red]offline[/]'}, "
            f"{info.get('active_tasks', 0)} active task(s)"
        )
    console().print("  queues: " + ", ".join(f"{q}={n}" for q, n in (result.get("queues") or {}).items()))
    for step in result.get("running_steps") or []:
        console().print(
            f"  running: build {step['build']} {step['step']} on {step['node']} "
            f"(attempt {step['attempt']}, since {step['started_at']})"
        )


def _follow_build(client: FarmClient, build_id: int, timeout: float, fmt: OutputFormat) -> BuildView:
    """Follow the build to its end (or ``timeout``): each ask waits at the farm until something
    changed (a long poll, ``client.changes``) and brings only the steps that did; the table is
    drawn again only then (``--output json``: not drawn, rich not imported)."""
    deadline = time.monotonic() + timeout
    view = client.show(build_id)
    live = None
    if fmt == OutputFormat.TEXT:
        from rich.live import Live

        live = Live(steps_table(view, console().width), console=console(), auto_refresh=False)
    with live or contextlib.nullcontext():
        while view.state not in TERMINAL_BUILD_STATES and time.monotonic() < deadline:
            asked = time.monotonic()
            known = {step.id: step.revision for step in view.steps}
            wait = max(0.0, min(LONG_POLL_SECONDS, deadline - asked))
            # only a table shows the steps as they move: JSON is told the build's end alone
            changes = client.changes(build_id, known, state=view.state, wait=wait, state_only=live is None)
            moved = bool(changes.steps) or changes.model_dump(exclude={"steps"}) != view.model_dump(
                exclude={"steps"}
            )
            view = view.with_changes(changes)
            if moved and live is not None:
                live.update(steps_table(view, console().width), refresh=True)
            elif not moved:  # a farm that does not hold the ask (an older one) is asked no faster
                time.sleep(max(0.0, WAIT_POLL_SECONDS - (time.monotonic() - asked)))
    return view


def _finish(view: BuildView, fmt: OutputFormat, waited: bool) -> None:
    if fmt == OutputFormat.JSON:
        emit_json(view)
    elif waited:
        console().print()
        if view.published:
            console().print(f"published: {view.published}", markup=False)
        if view.error:
            err_console().print(f"build {view.id} {view.state}: {view.error}")
    if waited and view.state not in TERMINAL_BUILD_STATES:
        err_console().print(f"build {view.id} still {view.state} after the wait timeout")
        raise typer.Exit(1)
    if waited and view.state != "succeeded":
        raise typer.Exit(1)


@build_app.command("submit")
def build_submit(
    manifest: Annotated[Path, typer.Argument(help="build manifest (YAML)")],
    wait: Annotated[bool, typer.Option("--wait", help="follow the build to its end")] = False,
    user: Annotated[
        str | None, typer.Option(help="who asks, local farm only (default: your login name)")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="with --wait: give up waiting after this many seconds")
    ] = 7200,
    output: OutputOpt = None,
) -> None:
    """Submit a build of MANIFEST; prints its id."""
    client = state.client()
    build_id = client.submit(manifest, user)
    fmt = state.fmt(output)
    if not wait:
        if fmt == OutputFormat.JSON:
            emit_json({"id": build_id})
        else:
            console().print(str(build_id))
        return
    if fmt == OutputFormat.TEXT:
        console().print(f"build {build_id} submitted")
    _finish(_follow_build(client, build_id, timeout, fmt), fmt, waited=True)


@build_app.command("list")
def build_list(
    *,
    project: Annotated[str | None, typer.Option()] = None,
    branch: Annotated[str | None, typer.Option()] = None,
    state_: Annotated[BuildState | None, typer.Option("--state")] = None,
    kind: Annotated[BuildKind | None, typer.Option()] = None,
    user: Annotated[str | None, typer.Option(help="builds of this user")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    output: OutputOpt = None,
) -> None:
    """List builds, newest first."""
    builds = state.client().list(
        project=project,
        branch=branch,
        state=state_.value if state_ else None,
        kind=kind.value if kind else None,
        user=user,
        limit=limit,
    )
    if state.fmt(output) == OutputFormat.JSON:
        emit_json([summary_dict(b) for b in builds])
    else:
        console().print(builds_table(builds))


@build_app.command("show")
def build_show(build_id: int, output: OutputOpt = None) -> None:
    """One build with its steps: state, node, duration, log location."""
    view = state.client().show(build_id)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(view)
        return
    console().print(steps_table(view, console().width))
    if view.published:
        console().print(f"published: {view.published}", markup=False)
    if view.error:
        console().print(f"error: {view.error}")
    for step in view.steps:
        if step.error:
            console().print(f"  {step.name}: {step.error}")
        if step.reuse_reason:
            console().print(f"  {step.name}: reused: {step.reuse_reason}", markup=False)


@build_app.command("logs")
def build_logs(
    build_id: int,
    step: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing while the step runs")] = False,
    timeout: Annotated[float, typer.Option(help="with --follow: stop after this many seconds")] = 7200,
) -> None:
    """Print a step's log (its latest attempt)."""
    client = state.client()
    deadline = time.monotonic() + timeout
    offset = 0
    printed = False
    while True:
        chunk, offset, live = client.read_log(build_id, step, offset)
        if chunk:
            printed = True
            typer.echo(chunk.decode("utf-8", "replace"), nl=False)
        if not (follow and live) or time.monotonic() > deadline:
            break
        time.sleep(LOG_POLL_SECONDS)
    if not printed and not follow:
        err_console().print(f"step {step} of build {build_id} has no log yet")


@build_app.command("cancel")
def build_cancel(build_id: int, output: OutputOpt = None) -> None:
    """Cancel a running build: queued steps are dropped, running builders are stopped."""
    view = state.client().cancel(build_id)
    _finish(view, state.fmt(output), waited=False)
    if state.fmt(output) == OutputFormat.TEXT:
        console().print(f"build {build_id} cancelled")


@build_app.command("retry")
def build_retry(
    build_id: int,
    wait: Annotated[bool, typer.Option("--wait")] = False,
    timeout: Annotated[float, typer.Option()] = 7200,
    output: OutputOpt = None,
) -> None:
    """Run a failed or cancelled build's failed and cancelled steps again."""
    client = state.client()
    view = client.retry(build_id)
    fmt = state.fmt(output)
    if wait:
        _finish(_follow_build(client, build_id, timeout, fmt), fmt, waited=True)
    elif fmt == OutputFormat.JSON:
        emit_json(view)
    else:
        console().print(f"build {build_id} retrying")


@repo_app.command("sources")
def repo_sources(
    project: str,
    branch: str,
    build: Annotated[int | None, typer.Option(help="a specific build instead of latest")] = None,
    output: OutputOpt = None,
) -> None:
    """Print the apt sources line of a branch's latest build (or of one build)."""
    source = state.client().sources(project, branch, build)
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(source)
    else:
        console().print(source.line, soft_wrap=True, markup=False)
        if source.source_line:  # the build's source packages: apt-get source <name>
            console().print(source.source_line, soft_wrap=True, markup=False)


@repo_app.command("key")
def repo_key(output: OutputOpt = None) -> None:
    """Print the armored OpenPGP public key the farm signs its repositories with.

    Store it where the apt lines' signed-by says, e.g.
    ``buildfarm repo key | sudo tee /etc/apt/keyrings/buildfarm.asc``.
    """
    key = state.client().repo_key()
    if state.fmt(output) == OutputFormat.JSON:
        emit_json(key)
    else:
        print(key.public_key, end="" if key.public_key.endswith("\n") else "\n")


def run() -> None:
    """Console entry point: one clear line for every error the farm raises on purpose.

    The garbage collector is off until the command has started (:meth:`CliState.pause_collector
    <buildfarm_cli.common.CliState.pause_collector>`), and whatever the command's outcome, the
    objects it leaves are frozen out of the garbage collector (:func:`gc.freeze`) before the
    interpreter exits: the exit's collections then skip the ~150 000 objects of the in-process
    API, which took 0.8-1.6 s of a loaded machine after every command (``build submit --wait``
    returned that long after its build was published)."""
    state.pause_collector()
    _without_httpx_command_line()
    try:
        app(standalone_mode=True)
    except TemporaryError as exc:
        _error(f"{exc} (try again later)")
        raise SystemExit(3) from None
    except BuildfarmError as exc:
        _error(str(exc))
        raise SystemExit(1) from None
    finally:
        gc.freeze()
        state.resume_collector()


def _without_httpx_command_line() -> None:
    """httpx imports its own command line (``httpx._main``) whenever click is installed, as the
    farm's Celery has it: click, pygments and rich's progress bars and syntax highlighting, 0.04 s
    of CPU of every command that reaches a farm.  This program never runs it, and with the
    module missing httpx gives ``httpx.main`` a stub instead (as where the client is installed
    alone); an httpx already imported keeps what it has."""
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: "not importable"


def _error(message: str) -> None:
    """One line, whatever the message (a driver's error may span several), never wrapped."""
    err_console().print("error: " + " ".join(message.split()), soft_wrap=True, markup=False, highlight=False)
