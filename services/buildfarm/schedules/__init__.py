"""Scheduled (nightly) builds: cron slots, each slot's build started exactly once (:mod:`.slots`).

What other packages may use is named here; the modules behind it are private to the package.
"""

from buildfarm.schedules.slots import (
    Cron,
    check_schedules,
    list_schedules,
    next_run,
    parse_cron,
    scheduled_manifest,
    start_schedule,
    tick,
)

__all__ = [
    "Cron",
    "check_schedules",
    "list_schedules",
    "next_run",
    "parse_cron",
    "scheduled_manifest",
    "start_schedule",
    "tick",
]
