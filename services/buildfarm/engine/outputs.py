"""Reuse a dependent when what its dependencies built did not change (issue 16 part 4).

A step's input key (``model/planner.py``) names its dependencies' input keys, so a change to a
library's comment gives every package below it a new key, although the library's packages come
out the same.  Here the engine looks at what the dependencies actually built:

* when a step succeeds, its **output identity** is recorded with its outputs: the normalised
  digest of its packages (``model/debcompare.py``: no build dates, no member order or
  compression, no ``.buildinfo``) or of its images;
* when every dependency of a pending step has succeeded, its **resolved key** is its own key
  (source, environment, options: everything but the dependencies) with the output identities of
  every step it depends on, transitively (the staging repository gives it all of them);
* a success anywhere in the farm with the same resolved key is reused, as a success of the same
  input key is.  The reuse says why: ``outputs of libgreet unchanged (identical to build 7)``.

Keys stay sound: the resolved key changes whenever anything the dependent would install
differs after normalisation, and the environment is in the own key.  A step without an own key
(submitted before this existed) or with a dependency without an output identity (built before,
or its packages unreadable) has no resolved key and is reused by input key only, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import Select, and_, bindparam, select
from sqlalchemy.orm import Session

from buildfarm.engine.context import FarmContext
from buildfarm.model.debcompare import identity_of, output_identity
from buildfarm.model.errors import BuildfarmError
from buildfarm.model.retention import EXPIRED_INPUT_KEY
from buildfarm.model.types import StepState
from buildfarm.state.models import Build, Step

log = logging.getLogger(__name__)


class KeyedStep(Protocol):
    """What a release reads and sets of a step: an ORM :class:`Step`, or a row read as one
    (``engine/advance.py``'s ``OpenStep``: a re-run releases thousands)."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def depends_on(self) -> list[str]: ...
    @property
    def input_key(self) -> str: ...
    @property
    def own_key(self) -> str | None: ...

    output_identity: str | None
    resolved_key: str | None
    reuse_reason: str | None


@dataclass(frozen=True)
class Original:
    """A success that built its outputs itself (not a reuse): what a step reusing it takes."""

    id: int
    build_id: int
    input_key: str
    output_identity: str | None
    node: str | None
    log_key: str | None


ORIGINAL_COLUMNS = (Step.id, Step.build_id, Step.input_key, Step.output_identity, Step.node, Step.log_key)
"""The columns of an :class:`Original`, in its fields' order."""


def identity_of_files(paths: list[Path]) -> str | None:
    """The output identity of a step's built files, or None (and a warning) if one is unreadable:
    then its dependents are reused by input key only."""
    try:
        return output_identity(paths)
    except BuildfarmError as exc:
        log.warning("no output identity: %s", exc)
        return None


def identity_of_images(digests: list[str]) -> str:
    return identity_of((), digests)


def _closure(step: KeyedStep, by_name: Mapping[str, KeyedStep]) -> list[KeyedStep]:
    """Every step of the build that ``step`` depends on, directly or not."""
    seen: dict[str, KeyedStep] = {}
    todo = list(step.depends_on)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = by_name[name]
        todo.extend(seen[name].depends_on)
    return [seen[n] for n in sorted(seen)]


def resolved_key(step: KeyedStep, by_name: Mapping[str, KeyedStep]) -> str | None:
    """The step's own key with the output identities of everything it depends on, or None when
    one of them is unknown (a row from before output identities)."""
    if not step.own_key:
        return None
    identities = []
    for dep in _closure(step, by_name):
        if dep.output_identity is None:
            return None
        identities.append((dep.name, dep.output_identity))
    material = {"v": 1, "own": step.own_key, "deps": identities}
    return hashlib.sha256(json.dumps(material, separators=(",", ":")).encode()).hexdigest()


def find_equivalent(
    session: Session, step: KeyedStep, by_name: Mapping[str, KeyedStep], same_input: Original | None
) -> Original | None:
    """Set the step's resolved key; return ``same_input`` (a success of its input key) if there
    is one, else a success anywhere with the same resolved key (an original, whose outputs
    retention has not expired), or None."""
    step.resolved_key = resolved_key(step, by_name)
    if same_input is not None or step.resolved_key is None:
        return same_input
    row = session.execute(
        select(*ORIGINAL_COLUMNS)
        .where(
            Step.resolved_key == step.resolved_key,
            Step.state == StepState.SUCCEEDED,
            Step.reused_from.is_(None),
            Step.input_key != EXPIRED_INPUT_KEY,
            Step.id != step.id,
        )
        .order_by(Step.finished_at.desc())
        .limit(1)
    ).first()
    return Original(*row) if row is not None else None


def adopt_outputs(
    session: Session, step: KeyedStep, original: Original, by_name: Mapping[str, KeyedStep]
) -> None:
    """A step reuses ``original``: it built the same, and says why when its input key was new."""
    step.output_identity = original.output_identity
    if original.input_key == step.input_key:
        return
    closure = _closure(step, by_name)
    rows = session.execute(
        select(Step.name, Step.input_key).where(
            Step.build_id == original.build_id, Step.name.in_([d.name for d in closure])
        )
    )
    then = {name: key for name, key in rows}
    changed = [d.name for d in closure if then.get(d.name) != d.input_key] or [d.name for d in closure]
    step.reuse_reason = f"outputs of {', '.join(changed)} unchanged (identical to build {original.build_id})"


def _comparison() -> Select[str | None, int | None, str | None]:
    """A just-built step's output identity and the previous success of the same package on the
    same branch (its build and identity; null when there is none), in one statement: a node
    runs it after every step it built, and the ORM's load of the step and of its build, then a
    query built anew each time, were a tenth of a node's own CPU a step."""
    steps, builds = Step.metadata.tables["steps"], Build.metadata.tables["builds"]
    this, previous = steps.alias("this"), steps.alias("previous")
    this_build, previous_build = builds.alias("this_build"), builds.alias("previous_build")
    before = previous.join(previous_build, previous_build.c.id == previous.c.build_id)
    return (
        select(
            this.c.output_identity,
            previous.c.build_id,
            previous.c.output_identity.label("previous_identity"),
        )
        .select_from(
            this.join(this_build, this_build.c.id == this.c.build_id).outerjoin(
                before,
                and_(
                    previous.c.name == this.c.name,
                    previous.c.state == StepState.SUCCEEDED,
                    previous.c.build_id < this.c.build_id,
                    previous_build.c.project == this_build.c.project,
                    previous_build.c.branch == this_build.c.branch,
                ),
            )
        )
        .where(this.c.id == bindparam("id"))
        # no previous success: the one row, its columns null; else the rows of the successes only
        .order_by(previous.c.build_id.desc())
        .limit(1)
    )


COMPARISON = _comparison()


def comparison_line(ctx: FarmContext, step_id: int) -> str | None:
    """A just-built step's outputs against the previous success of the same package on the same
    branch, as a line for its log; None when there is nothing to compare."""
    with ctx.db.statements() as connection:
        row = connection.execute(COMPARISON, {"id": step_id}).first()
    if row is None or row.output_identity is None or row.previous_identity is None:
        return None
    if row.previous_identity == row.output_identity:
        return (
            f"buildfarm: outputs identical to build {row.build_id}'s "
            "(build dates aside): steps that depend only on them are reused"
        )
    return f"buildfarm: outputs differ from build {row.build_id}'s (same package, same branch)"
