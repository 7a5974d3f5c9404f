"""``buildfarm backup``: copy release builds to the backup target, check it, restore a farm from it.

These are operator actions that run where the farm's settings are: on the local farm's machine,
or inside the farm's pod in a cluster (``kubectl exec deploy/<release>-buildfarm-api --
buildfarm backup run``); the chart's scheduler also runs ``backup run`` on ``backup_schedule``.
The target is the setting ``backup_target`` (``BUILDFARM_BACKUP_TARGET``): a directory or
``s3://<bucket>[/<prefix>]``.  ``restore`` fills a fresh, empty farm (new database, new
repository, new artifact store) and refuses one that already has builds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from buildfarm.model.errors import PermanentError
from buildfarm_cli.common import OutputOpt, state
from buildfarm_cli.output import OutputFormat, emit_json, err_console, phase_bars

if TYPE_CHECKING:  # the farm's stack is imported when a backup command runs, not for `--help`
    from buildfarm.engine.context import FarmContext

backup_app = typer.Typer(no_args_is_help=True, help="Backups of release builds: run, verify, restore.")

PHASES = {
    "files": "packages and sources",
    "logs": "step logs",
    "images": "images",
    "verify": "checksums",
    "publish": "publishing",
}


@contextmanager
def _farm(command: str) -> Iterator[FarmContext]:
    if state.farm_flag:
        raise PermanentError(
            f"`buildfarm backup {command}` runs where the farm's settings are (this machine's local farm, "
            "or inside the farm's pod: kubectl exec deploy/<release>-buildfarm-api -- buildfarm backup "
            f"{command}): drop --farm"
        )
    from buildfarm.local.inprocess import LocalFarm

    state.local(f"backup {command}")
    local = LocalFarm()
    try:
        yield local.database()
    finally:
        local.close()


def _emit(report: Any, fmt: OutputFormat, line: str) -> None:
    if fmt == OutputFormat.JSON:
        emit_json(report)
    else:
        err_console().print(line, markup=False, soft_wrap=True)


@backup_app.command("run")
def backup_run(output: OutputOpt = None) -> None:
    """Copy every published release build (packages, sources, logs, images, records) and the
    accounts to the backup target; what the target holds already is not copied again."""
    fmt = state.fmt(output)
    from buildfarm import backup

    with _farm("run") as ctx, phase_bars(fmt == OutputFormat.TEXT, PHASES, transient=False) as progress:
        report = backup.run_backup(ctx, progress=progress)
    _emit(
        report,
        fmt,
        f"backup in {report.target}: {len(report.builds)} release builds ({report.images} images, "
        f"{report.logs} logs), {report.objects} objects "
        f"({report.bytes} bytes); copied now {report.copied_objects} objects ({report.copied_bytes} bytes) "
        f"in {report.seconds:.1f} s",
    )


@backup_app.command("verify")
def backup_verify(output: OutputOpt = None) -> None:
    """Read every object of the newest backup back and check its sha256; exit 1 naming what is bad."""
    fmt = state.fmt(output)
    from buildfarm import backup

    with _farm("verify") as ctx, phase_bars(fmt == OutputFormat.TEXT, PHASES, transient=False) as progress:
        report = backup.verify_backup(ctx, progress=progress)
    if fmt == OutputFormat.JSON:
        emit_json({**report.__dict__, "ok": report.ok})
    elif report.ok:
        err_console().print(
            f"backup of {report.created_at} in {report.target}: {report.objects} objects "
            f"({report.bytes} bytes), every checksum matches",
            markup=False,
            soft_wrap=True,
        )
    else:
        for sha256 in report.corrupt:
            err_console().print(
                f"corrupt: {sha256} ({report.what.get(sha256, 'unknown object')}; moved aside, "
                "the next `backup run` copies it again)",
                markup=False,
                soft_wrap=True,
            )
        for sha256 in report.missing:
            err_console().print(
                f"missing: {sha256} ({report.what.get(sha256, 'unknown object')})",
                markup=False,
                soft_wrap=True,
            )
    if not report.ok:
        raise typer.Exit(1)


@backup_app.command("restore")
def backup_restore(output: OutputOpt = None) -> None:
    """Restore the newest backup into this fresh, empty farm (refused if it has builds)."""
    fmt = state.fmt(output)
    from buildfarm import backup

    with _farm("restore") as ctx, phase_bars(fmt == OutputFormat.TEXT, PHASES, transient=False) as progress:
        report = backup.restore_backup(ctx, progress=progress)
    latest = ", ".join(f"{branch} -> {build}" for branch, build in sorted(report.latest.items()))
    _emit(
        report,
        fmt,
        f"restored from {report.target}: {len(report.builds)} release builds, {report.objects} objects, "
        f"{report.logs} logs, {report.images} images in {report.seconds:.1f} s; latest: {latest or 'none'}",
    )
