"""``buildfarm retention run`` and ``buildfarm storage report``: the data lifecycle, for admins.

The sweep applies the retention policy (settings ``retention_*``) across every store: the
repository's distributions, registry images, content objects (past the grace period), logs and
build records.  ``--dry-run`` changes nothing and prints what would go and the bytes it would
free.  Locally they run against this machine's farm with a progress bar; with a farm URL they go
through the REST API (``POST /api/v1/retention/run``, ``GET /api/v1/storage``), admins only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from buildfarm_cli.common import OutputOpt, state
from buildfarm_cli.output import OutputFormat, console, emit_json, err_console, phase_bars

if TYPE_CHECKING:
    from buildfarm_client.models import StorageReportOut, SweepReportOut

retention_app = typer.Typer(no_args_is_help=True, help="The retention policy: expire old builds everywhere.")
storage_app = typer.Typer(no_args_is_help=True, help="What the farm stores, and what the next sweep frees.")

PHASES = {"repository": "repository", "logs": "logs"}


def human_bytes(count: int | None) -> str:
    if count is None:
        return "?"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def sweep_lines(report: SweepReportOut) -> list[str]:
    verb = "would expire" if report.dry_run else "expired"
    classes = ", ".join(f"{count} {kind}" for kind, count in report.builds_by_class.items()) or "none"
    lines = [
        f"{verb} {len(report.build_ids)} build(s): {classes}",
        f"  {report.builds_deleted} removed whole, {report.builds_reduced} kept as records "
        "(last success/failure logs, or steps a kept build reuses)",
        f"  objects: {report.objects}, logs: {report.logs}, images: {report.images}, "
        f"bytes {'to free' if report.dry_run else 'freed'}: {human_bytes(report.bytes_freed)}"
        + (" (objects only)" if report.dry_run else ""),
    ]
    if report.uploads:
        lines.append(
            f"  of the objects, {report.uploads} upload(s) no build used "
            f"{'would go' if report.dry_run else 'went'} (older than the upload hours)"
        )
    if report.repository_versions:
        what = "unpublished repository version(s)" if report.dry_run else "repository version(s)"
        lines.append(
            f"  {report.repository_versions} {what} left by crashed builds "
            f"{'would go' if report.dry_run else 'removed'}"
        )
    if report.objects_skipped_recent:
        lines.append(f"  {report.objects_skipped_recent} object(s) kept: put again within the grace period")
    if report.repository_bytes_freed is not None:
        lines.append(f"  repository garbage collection freed {human_bytes(report.repository_bytes_freed)}")
    if report.registry_bytes_freed is not None:
        lines.append(f"  registry garbage collection freed {human_bytes(report.registry_bytes_freed)}")
    lines.extend(f"  warning: {line}" for line in report.warnings)
    if report.skipped_builds:
        lines.append(f"  kept whole (the repository still serves them): {report.skipped_builds}")
    if report.build_ids:
        shown = ", ".join(map(str, report.build_ids[:20])) + (" ..." if len(report.build_ids) > 20 else "")
        lines.append(f"  builds: {shown}")
    lines.append(f"  selection {report.selection_seconds:.3f} s, sweep {report.seconds:.3f} s")
    return lines


@retention_app.command("run")
def retention_run(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="change nothing: print what would go")] = False,
    output: OutputOpt = None,
) -> None:
    """Expire the builds the retention policy lets go, in every store at once (admins only)."""
    fmt = state.fmt(output)
    client = state.client(in_process=True)  # locally, the sweep runs here and shows its progress
    local = not client.where.startswith("at ")
    with phase_bars(fmt == OutputFormat.TEXT and local and not dry_run, PHASES, transient=True) as progress:
        if fmt == OutputFormat.TEXT and not local:
            with err_console().status(f"sweeping the farm {client.where} ...", spinner="dots"):
                report = client.run_retention(dry_run)
        else:
            report = client.run_retention(dry_run, progress)
    if fmt == OutputFormat.JSON:
        emit_json(report)
        return
    for line in sweep_lines(report):
        console().print(line, markup=False, soft_wrap=True)


@storage_app.command("report")
def storage_report(output: OutputOpt = None) -> None:
    """Bytes by class, project and branch, and what the next retention sweep would free (admins only)."""
    fmt = state.fmt(output)
    client = state.client()
    if fmt == OutputFormat.JSON:
        emit_json(client.storage_report())
        return
    with err_console().status("measuring ...", spinner="dots"):
        report = client.storage_report()
    _print_storage(report)


def _print_storage(report: StorageReportOut) -> None:
    from rich.table import Table

    table = Table()
    for column in ("class", "project", "branch", "builds", "outputs", "sources"):
        table.add_column(column, justify="right" if column in ("builds", "outputs", "sources") else "left")
    for group in report.groups:
        table.add_row(
            group.kind,
            group.project,
            group.branch,
            str(group.builds),
            human_bytes(group.output_bytes),
            human_bytes(group.source_bytes),
        )
    console().print(table)
    console().print(
        f"{report.builds} build(s); distinct output files: {human_bytes(report.output_bytes)}; "
        f"uploads no build used yet: {report.uploads} ({human_bytes(report.upload_bytes)})",
        markup=False,
    )
    console().print("next sweep:", markup=False)
    for line in sweep_lines(report.next_sweep):
        console().print(line, markup=False, soft_wrap=True)
