"""The build pipeline: plan, release, run, fence and publish.  It never knows which backend it got.

One build's path: :func:`submit_build` (plan the manifest, record it, pack and key every step's
source: :mod:`.fetch`, :mod:`.srcpkg`, :mod:`.gbpsource`, :mod:`.stxsource`, :mod:`.images`; the
trees pack while the first steps build: :mod:`.packing`) ->
:func:`advance_build` (release ready steps in critical-path order, reuse what an equal input key
built, publish when all succeeded) -> :func:`run_step` on some node (claim with a lease, run the
runner, store outputs, release dependents) -> :func:`advance_build` again.  :func:`reap` takes
back expired leases and sweeps dead attempts; :mod:`.builders` adopts or reaps builder pods;
:mod:`.control` is what people ask of builds (show, list, cancel, retry, logs).

Everything concrete (stores, repository, runners, registry, backup target) arrives in the
:class:`FarmContext` (built by :mod:`buildfarm.wiring`).  What other packages may use is named
here and in ``__all__``; the feature packages (accounts, schedules, retention, backup, mirrors)
sit above this one.
"""

from buildfarm.engine.advance import advance_build, publish_build
from buildfarm.engine.context import Dispatcher, FarmContext, FarmParts
from buildfarm.engine.control import (
    apt_sources,
    build_changes,
    cancel_build,
    find_step,
    page_builds,
    retry_build,
    show_build,
    step_log_key,
)
from buildfarm.engine.reaper import ReapReport, reap
from buildfarm.engine.steps import log_key_for, run_step
from buildfarm.engine.submit import moves_latest, submit_build

__all__ = [
    "Dispatcher",
    "FarmContext",
    "FarmParts",
    "ReapReport",
    "advance_build",
    "apt_sources",
    "build_changes",
    "cancel_build",
    "find_step",
    "log_key_for",
    "moves_latest",
    "page_builds",
    "publish_build",
    "reap",
    "retry_build",
    "run_step",
    "show_build",
    "step_log_key",
    "submit_build",
]
