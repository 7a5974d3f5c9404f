"""``advance`` costs what changed, not the build's size (issue 16 part 5): staging fetches each
package once over a build, and a release loads only the steps still open."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from buildfarm.engine import advance, advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.model.sources import pack_tree
from buildfarm.model.types import StepState
from buildfarm.state.models import Build, Step, StepOutput, utcnow

from debpkgs import build_deb
from farmkit import dispatcher, make_test_context, recorded_build


def _add_build(ctx: FarmContext, names: list[str], depends: dict[str, list[str]]) -> int:
    return recorded_build(ctx, names, depends)


def _succeed(ctx: FarmContext, build_id: int, name: str, deb_dir: Path | None = None) -> None:
    """Record ``name`` as built (with a real .deb in the store when ``deb_dir`` is given)."""
    with ctx.db.session() as session:
        step = session.scalars(select(Step).where(Step.build_id == build_id, Step.name == name)).one()
        step.state, step.finished_at, step.attempt = StepState.SUCCEEDED, utcnow(), 1
        if deb_dir is not None:
            deb = build_deb(deb_dir, f"bf-{name}", "1.0")
            ctx.store.put_file(deb.path)
            session.add(
                StepOutput(
                    step_id=step.id, attempt=1, filename=deb.filename, sha256=deb.sha256, size=deb.size
                )
            )


def _step_id(ctx: FarmContext, build_id: int, name: str) -> int:
    with ctx.db.session() as session:
        return session.scalars(select(Step.id).where(Step.build_id == build_id, Step.name == name)).one()


def _state(ctx: FarmContext, build_id: int, name: str) -> StepState:
    with ctx.db.session() as session:
        return session.scalars(select(Step.state).where(Step.build_id == build_id, Step.name == name)).one()


def test_staging_fetches_each_package_once_over_a_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    chain = ["a", "b", "c", "d"]
    build_id = _add_build(ctx, chain, {"b": ["a"], "c": ["b"], "d": ["c"]})
    fetched: list[str] = []
    fetch = ctx.store.fetch
    monkeypatch.setattr(
        ctx.store, "fetch", lambda sha256, dest: (fetched.append(sha256), fetch(sha256, dest))[1]
    )
    advance_build(ctx, build_id)  # releases a: nothing to stage
    for done, following in itertools.pairwise(chain):
        _succeed(ctx, build_id, done, tmp_path / done)
        advance_build(ctx, build_id)
        assert _state(ctx, build_id, following) == StepState.READY
    # Three releases staged 1, 2 and 3 packages: each fetched once (was 1 + 2 + 3).
    assert len(fetched) == len(set(fetched)) == 3
    with ctx.db.session() as session:
        staging = session.get_one(Build, build_id).staging_source
    assert staging is not None
    packages = (ctx.settings.state_dir / "repos/p/main/staging" / str(build_id) / "Packages").read_text()
    assert sorted(line for line in packages.splitlines() if line.startswith("Package:")) == [
        "Package: bf-a",
        "Package: bf-b",
        "Package: bf-c",
    ]
    ctx.db.dispose()


@pytest.mark.parametrize("done", [3, 60])
def test_a_release_reads_the_open_steps_only(
    tmp_path: Path, done: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It reads the pending steps and what they depend on, as rows, and loads no step as an ORM
    object (those that become ready are staged and ticketed from their rows too)."""
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    names = [f"lib{i}" for i in range(done)] + ["app", "docs"]
    build_id = _add_build(ctx, names, {"app": ["lib0"], "docs": ["app"]})
    for name in names[:done]:
        _succeed(ctx, build_id, name)
    loaded: list[str] = []
    read: list[str] = []

    def count(step: Step, _context: object) -> None:
        loaded.append(step.name)

    open_steps = advance.open_steps

    def reading(session: Session, build: int) -> list[advance.OpenStep]:
        rows = open_steps(session, build)
        read.extend(s.name for s in rows)
        return rows

    monkeypatch.setattr(advance, "open_steps", reading)
    event.listen(Step, "load", count)
    try:
        advance_build(ctx, build_id)
    finally:
        event.remove(Step, "load", count)
    assert _state(ctx, build_id, "app") == StepState.READY
    assert _state(ctx, build_id, "docs") == StepState.PENDING
    assert dispatcher(ctx).runs == [(_step_id(ctx, build_id, "app"), 1)]
    assert sorted(read) == ["app", "docs", "lib0"]  # not the other finished libraries
    assert loaded == []
    ctx.db.dispose()


def test_a_release_reads_the_whole_dependency_closure(tmp_path: Path) -> None:
    """A resolved key reads the output identities of every step a pending one depends on, not
    only its direct dependencies: loading only those raised KeyError (found at merge time)."""
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    build_id = _add_build(ctx, ["lib", "mid", "app"], {"mid": ["lib"], "app": ["mid"]})
    for name in ("lib", "mid"):
        _succeed(ctx, build_id, name)
    with ctx.db.session() as session:
        for step in session.scalars(select(Step).where(Step.build_id == build_id)):
            step.own_key = f"own-{step.name}"
            step.output_identity = f"identity-{step.name}" if step.name != "app" else None
    advance_build(ctx, build_id)
    assert _state(ctx, build_id, "app") == StepState.READY
    with ctx.db.session() as session:
        app = session.scalars(select(Step).where(Step.build_id == build_id, Step.name == "app")).one()
        assert app.resolved_key is not None  # computed from lib's and mid's identities
    ctx.db.dispose()


def _bare_bundle(ctx: FarmContext, tmp_path: Path) -> str:
    """A stored source bundle of a bare tree (publishing leaves it out: no source files)."""
    tree = tmp_path / "bare"
    (tree / "debian").mkdir(parents=True, exist_ok=True)
    return ctx.store.put_bytes(pack_tree(tree)).sha256


def _rerun(ctx: FarmContext, count: int, bundle: str) -> int:
    """A build of ``count`` steps built before (same input keys, originals succeeded), not released."""
    keys = [f"key-{index}".ljust(64, "0") for index in range(count)]
    ids = []
    for _ in range(2):
        with ctx.db.session() as session:
            build = Build(
                project="p", branch="main", kind="nightly", user="u", manifest={}, environment_id="e"
            )
            session.add(build)
            session.flush()
            for index, key in enumerate(keys):
                session.add(
                    Step(
                        build_id=build.id,
                        name=f"pkg{index}",
                        version="1",
                        origin="o",
                        source_sha256=bundle,
                        tree_hash="t",
                        input_key=key,
                        depends_on=[],
                    )
                )
            ids.append(build.id)
    with ctx.db.session() as session:
        session.execute(
            update(Step)
            .where(Step.build_id == ids[0])
            .values(state=StepState.SUCCEEDED, finished_at=utcnow())
        )
    return ids[1]


@pytest.mark.parametrize("count", [3, 60])
def test_a_rerun_reuses_every_step_in_a_few_queries(tmp_path: Path, count: int) -> None:
    """The reuse lookups are batched: one query per 500 keys, not one (or two) per step."""
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    build_id = _rerun(ctx, count, _bare_bundle(ctx, tmp_path))
    statements: list[str] = []
    event.listen(ctx.db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    advance_build(ctx, build_id)
    with ctx.db.session() as session:
        build = session.get_one(Build, build_id)
        assert build.state == "succeeded", build.error
        assert all(step.reused_from is not None for step in build.steps)
    steps_read = [s for s in statements if s.lstrip().startswith("SELECT") and "FROM steps" in s]
    assert len(steps_read) <= 11, steps_read  # was 1 per step (its earlier success) and more
    assert len(statements) <= 40, statements  # the same for 3 steps and for 60
    ctx.db.dispose()


@pytest.mark.parametrize("fault", ["permanent", "temporary"])
def test_a_staging_that_fails_takes_back_the_steps_it_made_ready(
    tmp_path: Path, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The released steps are rows, not ORM objects: a staging that gives up skips them (and
    what depends on them), one that waits puts them back to pending; no ticket either way."""
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    build_id = _add_build(ctx, ["a", "b", "c", "d"], {"b": ["a"], "c": ["b"]})
    _succeed(ctx, build_id, "a")
    error = PermissionError(13, "Permission denied") if fault == "permanent" else OSError(28, "No space left")

    def refuse(*_args: object) -> None:
        raise error

    monkeypatch.setattr(ctx.repo, "stage", refuse)
    advance_build(ctx, build_id)
    with ctx.db.session() as session:
        steps = {s.name: s for s in session.scalars(select(Step).where(Step.build_id == build_id))}
        build = session.get_one(Build, build_id)
        b, c = steps["b"], steps["c"]
        assert b.ready_at is None and steps["d"].state == StepState.READY
        if fault == "permanent":
            assert (b.state, b.error) == (
                StepState.SKIPPED,
                "not built: staging failed: the disk refused: Permission denied",
            )
            assert b.finished_at is not None
            assert (c.state, c.error) == (StepState.SKIPPED, "not built: dependency b did not succeed")
        else:
            assert (b.state, c.state) == (StepState.PENDING, StepState.PENDING)
            assert (build.error or "").startswith("staging waits for the repository"), build.error
        d_id = steps["d"].id
    assert dispatcher(ctx).runs == [(d_id, 1)]
    ctx.db.dispose()
