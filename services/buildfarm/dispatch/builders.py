"""``python -m buildfarm.dispatch.builders reap``: one pass of the builder orphan reaper.

The chart's cleanup CronJob runs it; every worker with ``runner: kubernetes`` also runs it once
when it starts (:func:`reap_on_worker_start`), so the steps its previous incarnation held are
settled before it takes new work.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from buildfarm.dispatch.context import make_context
from buildfarm.engine.builders import VANISHED_GRACE_SECONDS, BuilderReapReport, reap_builders
from buildfarm.model.errors import BuildfarmError
from buildfarm.model.settings import Settings, load_settings

log = logging.getLogger(__name__)


def summary(report: BuilderReapReport) -> str:
    return (
        f"deleted {len(report.deleted_jobs)} Jobs and {len(report.deleted_pods)} pods, "
        f"kept {len(report.kept)}, {len(report.requeued)} steps back to ready"
    )


def reap_on_worker_start(settings: Settings, node: str | None) -> None:
    """The worker-start pass: logged, never fatal (the CronJob and the engine's reaper follow)."""
    if settings.builders.runner != "kubernetes":
        return
    try:
        report = reap_builders(make_context(settings), node=node)
    except BuildfarmError as exc:
        log.warning("builder reaper at worker start: %s", exc)
        return
    log.info("builder reaper at worker start: %s", summary(report))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m buildfarm.dispatch.builders")
    parser.add_argument("command", choices=["reap"], help="delete orphaned builder Jobs and pods")
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=VANISHED_GRACE_SECONDS,
        help="a running step is only called vanished when it started longer ago than this",
    )
    args = parser.parse_args(argv)
    try:
        report = reap_builders(make_context(load_settings()), grace_seconds=args.grace_seconds)
    except BuildfarmError as exc:
        print(f"builders reap: {exc}", file=sys.stderr)
        return 1
    print(f"builders reap: {summary(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
