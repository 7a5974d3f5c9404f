"""The retention policy, and what a sweep deletes once the expired builds are known.

Classes ``release`` and ``mirror`` are kept forever (mirrors are not builds: no sweep touches
them); ``nightly`` builds are kept N days, ``on-demand`` and ``personal`` ones M days, counted
from when they finished.  Whatever its age a build is kept when ``latest`` of its branch points
at it (the newest succeeded non-personal build) or when it is among its branch's newest K
finished builds; running builds are never touched.

An expired build does not always vanish whole.  Two things hold parts of it back:

* a kept build that *reused* one of its steps (``Step.reused_from``) keeps that producing step
  with everything it made: its output rows, their objects, its source tarball and its logs;
* the last successful and the last failed step of each package on each branch keep their row and
  their log (the rest of their build may go), so "why did it fail" stays answerable.

This module is the pure half: given the expired builds and their steps (plain records read by
:mod:`buildfarm.retention.sweep`, which owns the SQL), it decides which rows, objects, logs and
image manifests go.  Content objects are shared between builds, so an object a doomed step names
is deleted only if no surviving row names it too: the engine counts the rows naming each
candidate object in the whole database and compares with the doomed rows' own count.

Uploads (source tarballs and image contexts sent through the API, ``Upload`` rows) are the
one kind of object no build may ever name: an upload older than ``retention_upload_hours``
loses its row, and its object goes by the same count, so an object that a build's step or
output, or a younger upload, names stays.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from buildfarm.model.settinggroups import RetentionSettings
from buildfarm.model.types import BuildKind, BuildState, OutputKind, StepState

FOREVER_CLASSES = frozenset({BuildKind.RELEASE, "mirror"})
"""Build classes (kinds) no sweep ever expires."""
EXPIRED_INPUT_KEY = "expired"
"""``Step.input_key`` of a step whose outputs a sweep deleted while its row stays (for its log):
no later build may reuse it (``find_reusable`` matches input keys), so nothing reuses lost bytes."""
LOG_STEP_STATES = (StepState.SUCCEEDED, StepState.FAILED)


# The policy's numbers are the settings group ``retention`` (:class:`RetentionSettings`: days per
# class, newest K per branch, the grace period, the upload hours); these read dates from them.


def expiry_cutoffs(retention: RetentionSettings, now: dt.datetime) -> dict[str, dt.datetime]:
    """Per expiring class: a build that finished before this is old enough to expire (classes
    not named here are kept forever)."""
    days = {
        BuildKind.NIGHTLY: retention.nightly_days,
        BuildKind.ON_DEMAND: retention.on_demand_days,
        BuildKind.PERSONAL: retention.personal_days,
    }
    return {kind: now - dt.timedelta(days=count) for kind, count in days.items()}


def upload_cutoff(retention: RetentionSettings, now: dt.datetime) -> dt.datetime:
    """An upload made before this is expired (its object goes unless a row names it)."""
    return now - dt.timedelta(hours=retention.upload_hours)


def grace_cutoff(retention: RetentionSettings, now: dt.datetime) -> dt.datetime:
    """Objects last put after this are never deleted (an upload may be in flight)."""
    return now - dt.timedelta(seconds=retention.grace_seconds)


@dataclass(frozen=True)
class BuildRecord:
    id: int
    project: str
    branch: str
    kind: BuildKind
    user: str
    state: BuildState
    published: bool  # still has a published distribution (published_url set)
    finished_at: dt.datetime | None = None
    staging: bool = False  # its staging repository was not dropped yet (the repository was down)


@dataclass(frozen=True)
class StepRecord:
    id: int
    build_id: int
    name: str
    kind: str  # package | image
    state: str
    input_key: str
    source_sha256: str
    reused_from: int | None
    attempt: int
    log_key: str | None


@dataclass(frozen=True)
class OutputRecord:
    step_id: int
    filename: str
    sha256: str
    size: int
    kind: OutputKind

    @property
    def is_image(self) -> bool:
        return self.kind == OutputKind.IMAGE


@dataclass(frozen=True)
class UploadRecord:
    id: int
    sha256: str
    size: int


@dataclass
class SweepPlan:
    """What one sweep deletes (or, dry, would delete), before the store's grace period is applied."""

    deleted_builds: list[BuildRecord] = field(default_factory=list)  # every row of them goes
    reduced_builds: list[BuildRecord] = field(default_factory=list)  # rows kept for a log or a reuser
    doomed_steps: set[int] = field(default_factory=set)  # step rows deleted
    log_steps: set[int] = field(default_factory=set)  # rows (and log) kept, outputs dropped
    kept_producers: set[int] = field(default_factory=set)  # kept whole: a kept build reuses them
    dropped_output_steps: set[int] = field(default_factory=set)  # whose output rows are deleted
    unreusable: set[int] = field(default_factory=set)  # originals to mark: no build may reuse them
    objects: dict[str, int | None] = field(default_factory=dict)  # sha256 -> size if known
    logs: list[str] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (reference, digest hex)
    uploads: list[UploadRecord] = field(default_factory=list)  # expired upload rows: they all go
    output_bytes: int = 0

    @property
    def expired_builds(self) -> list[BuildRecord]:
        return [*self.deleted_builds, *self.reduced_builds]

    def by_class(self) -> dict[str, int]:
        return dict(sorted(Counter(b.kind for b in self.expired_builds).items()))


def plan_sweep(
    builds: Iterable[BuildRecord],
    steps: Iterable[StepRecord],
    outputs: Iterable[OutputRecord],
    *,
    log_steps: set[int],
    kept_producers: set[int],
    log_keys_of: Callable[[StepRecord], list[str]],
    uploads: Iterable[UploadRecord] = (),
) -> SweepPlan:
    """Split the expired builds' rows into what goes and what stays.

    ``log_steps``: the expired steps that are the last success or failure of their package on
    their branch; ``kept_producers``: the expired steps a kept step reuses; ``log_keys_of``: every
    log key a step wrote itself (one per attempt); ``uploads``: the expired uploads.  The plan's
    ``objects`` are *candidates*: the caller removes those a surviving row still names
    (:func:`unreferenced`).
    """
    builds = list(builds)
    steps = list(steps)
    plan = SweepPlan(kept_producers=set(kept_producers))
    retained = kept_producers | log_steps
    plan.log_steps = log_steps - kept_producers
    plan.doomed_steps = {s.id for s in steps if s.id not in retained}
    plan.dropped_output_steps = plan.doomed_steps | plan.log_steps
    plan.unreusable = {s.id for s in steps if s.reused_from is None and s.id in plan.dropped_output_steps}
    holding = {s.build_id for s in steps if s.id in retained}
    for build in sorted(builds, key=lambda b: b.id):
        (plan.reduced_builds if build.id in holding else plan.deleted_builds).append(build)

    protected_logs: set[str] = set()
    for step in steps:
        if step.id in kept_producers:
            protected_logs.update(log_keys_of(step))
        if step.id in retained and step.log_key:
            protected_logs.add(step.log_key)  # a reused step's log is its producer's
    for step in steps:
        if step.id in plan.dropped_output_steps:  # doomed, or kept for its log only
            plan.objects.setdefault(step.source_sha256, None)
        if step.id not in retained:
            plan.logs.extend(key for key in log_keys_of(step) if key not in protected_logs)
    for output in outputs:
        if output.step_id not in plan.dropped_output_steps:
            continue
        if output.is_image:
            plan.images.append((output.filename, output.sha256))
            continue
        plan.output_bytes += output.size
        plan.objects[output.sha256] = output.size
    plan.uploads = sorted(uploads, key=lambda u: u.id)
    for upload in plan.uploads:
        if plan.objects.get(upload.sha256) is None:
            plan.objects[upload.sha256] = upload.size
    plan.logs.sort()
    return plan


def doomed_references(
    plan: SweepPlan, steps: Iterable[StepRecord], outputs: Iterable[OutputRecord]
) -> Counter[str]:
    """How many rows naming each candidate object the sweep itself removes or rewrites."""
    counts: Counter[str] = Counter()
    for step in steps:
        if step.id in plan.dropped_output_steps:  # a log step's row stays, its source may go
            counts[step.source_sha256] += 1
    for output in outputs:
        if output.step_id in plan.dropped_output_steps and not output.is_image:
            counts[output.sha256] += 1
    counts.update(upload.sha256 for upload in plan.uploads)
    return counts


def unreferenced(candidates: Iterable[str], in_database: Counter[str], doomed: Counter[str]) -> list[str]:
    """The candidate objects no surviving row names: every row naming them is one the sweep removes.

    A log step's row stays but its source tarball may go: its ``source_sha256`` is counted both
    among ``in_database`` and among ``doomed`` (:func:`doomed_references`).
    """
    return sorted(sha for sha in candidates if in_database[sha] <= doomed[sha])
