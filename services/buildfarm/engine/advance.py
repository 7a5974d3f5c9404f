"""Move a build forward: release steps whose dependencies are done, reuse, stage, publish.

``advance_build`` is idempotent and safe to run any number of times, concurrently too: it works
under a lock on the build's row, releases only ``pending`` steps, and only one caller wins the
``running -> publishing`` transition.  Every Celery task that changes a step ends by asking for
it, and the reaper asks for it for builds that look stuck.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from buildfarm.backends.base import BuildRef, PackageFile
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import moves_latest
from buildfarm.state.models import (
    TERMINAL_BUILD_STATES,
    TERMINAL_STEP_STATES,
    Build,
    BuildState,
    Step,
    StepOutput,
    StepState,
    utcnow,
)

log = logging.getLogger(__name__)

PUBLISH_CLAIM_SECONDS = 600
"""A publisher silent this long is taken as dead and another may publish (idempotently)."""
PACKAGE_SUFFIXES = (".deb", ".udeb")


def build_ref(build: Build) -> BuildRef:
    return BuildRef(build.id, build.project, build.branch, build.kind, build.user)


def _lock_build(session: Session, build_id: int) -> Build | None:
    return session.scalars(select(Build).where(Build.id == build_id).with_for_update()).one_or_none()


def find_reusable(session: Session, input_key: str) -> Step | None:
    """A step anywhere in the farm that built this input key successfully (the original, not a reuse)."""
    return session.scalars(
        select(Step)
        .where(Step.input_key == input_key, Step.state == StepState.SUCCEEDED, Step.reused_from.is_(None))
        .order_by(Step.finished_at.desc())
        .limit(1)
    ).first()


def producing_step_id(step: Step) -> int:
    return step.reused_from if step.reused_from is not None else step.id


def _release(session: Session, build: Build) -> list[Step]:
    """Resolve pending steps; return the ones that became ready. Loops until nothing changes."""
    now = utcnow()
    released: list[Step] = []
    by_name = {s.name: s for s in build.steps}
    changed = True
    while changed:
        changed = False
        for step in build.steps:
            if step.state != StepState.PENDING:
                continue
            deps = [by_name[d] for d in step.depends_on]
            if any(d.state in (StepState.FAILED, StepState.CANCELLED, StepState.SKIPPED) for d in deps):
                step.state = StepState.SKIPPED
                step.finished_at = now
                failed = [d.name for d in deps if d.state != StepState.SUCCEEDED]
                step.error = f"not built: dependency {', '.join(failed)} did not succeed"
                changed = True
            elif all(d.state == StepState.SUCCEEDED for d in deps):
                original = find_reusable(session, step.input_key)
                if original is not None and original.id != step.id:
                    step.state = StepState.SUCCEEDED
                    step.reused_from = original.id
                    step.started_at = step.finished_at = now
                    step.node = original.node
                    step.log_key = original.log_key
                    changed = True
                else:
                    step.state = StepState.READY
                    step.ready_at = now
                    released.append(step)
    return released


def _outputs(session: Session, steps: list[Step]) -> list[StepOutput]:
    producers = [producing_step_id(s) for s in steps if s.state == StepState.SUCCEEDED]
    if not producers:
        return []
    return list(session.scalars(select(StepOutput).where(StepOutput.step_id.in_(producers))))


def _materialize(ctx: FarmContext, outputs: list[StepOutput], into: Path) -> list[PackageFile]:
    files = []
    for output in outputs:
        if not output.filename.endswith(PACKAGE_SUFFIXES):
            continue
        path = into / output.filename
        ctx.store.fetch(output.sha256, path)
        files.append(PackageFile(output.filename, output.sha256, output.size, path))
    return files


def advance_build(ctx: FarmContext, build_id: int) -> None:
    """Release what can run, then dispatch it; publish or close the build when every step is done."""
    to_run: list[tuple[int, int]] = []
    finish: str | None = None
    with ctx.db.session() as session:
        build = _lock_build(session, build_id)
        if build is None:
            log.warning("advance: build %s does not exist", build_id)
            return
        if build.state in TERMINAL_BUILD_STATES:
            if build.state == BuildState.CANCELLED:
                ctx.repo.drop_staging(build_ref(build))
            return
        released = _release(session, build)
        needs_stage = [s for s in released if s.depends_on]
        if needs_stage:
            with tempfile.TemporaryDirectory(dir=ctx.work_root, prefix="stage-") as tmp:
                packages = _materialize(ctx, _outputs(session, build.steps), Path(tmp))
                build.staging_source = ctx.repo.stage(build_ref(build), packages).line()
        to_run = [(s.id, s.attempt + 1) for s in sorted(released, key=lambda s: -s.priority)]
        if all(s.state in TERMINAL_STEP_STATES for s in build.steps):
            if all(s.state == StepState.SUCCEEDED for s in build.steps):
                finish = "publish"
            else:
                build.state = BuildState.FAILED
                build.finished_at = utcnow()
                bad = [s.name for s in build.steps if s.state in (StepState.FAILED, StepState.CANCELLED)]
                build.error = f"step(s) failed: {', '.join(bad)}; latest was not moved"
                finish = "close"
    for step_id, attempt in to_run:
        ctx.dispatcher.run_step(step_id, attempt)
    if finish == "publish":
        publish_build(ctx, build_id)
    elif finish == "close":
        with ctx.db.session() as session:
            build = session.get_one(Build, build_id)
            ctx.repo.drop_staging(build_ref(build))


def publish_build(ctx: FarmContext, build_id: int) -> bool:
    """Publish a build whose steps all succeeded; only one caller wins. Returns whether it did."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=PUBLISH_CLAIM_SECONDS)
    with ctx.db.session() as session:
        claimed = session.execute(
            update(Build)
            .where(
                Build.id == build_id,
                (Build.state == BuildState.RUNNING)
                | ((Build.state == BuildState.PUBLISHING) & (Build.publish_claimed_at < stale)),
            )
            .values(state=BuildState.PUBLISHING, publish_claimed_at=now)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return False
    with ctx.db.session() as session:
        build = session.get_one(Build, build_id)
        ref = build_ref(build)
        outputs = _outputs(session, build.steps)
    tmp = Path(tempfile.mkdtemp(dir=ctx.work_root, prefix="publish-"))
    try:
        packages = _materialize(ctx, outputs, tmp)
        source = ctx.repo.publish(ref, packages, move_latest=moves_latest(ref.kind))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with ctx.db.session() as session:
        session.execute(
            update(Build)
            .where(Build.id == build_id, Build.state == BuildState.PUBLISHING)
            .values(state=BuildState.SUCCEEDED, finished_at=utcnow(), published_url=source.line())
        )
    ctx.repo.drop_staging(ref)
    log.info("build %s published: %s", build_id, source.line())
    return True
