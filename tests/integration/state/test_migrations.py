"""The Alembic migrations and the SQLAlchemy models describe the same schema, on both databases.

A model changed without a migration (or the reverse) would pass every test that creates tables
from the models yet break a farm upgraded with ``alembic upgrade``: autogenerate's comparison
after upgrading a fresh database must find nothing to do.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, insert, select

from buildfarm.engine import control
from buildfarm.engine.images import pushed_reference
from buildfarm.engine.steps import claim_next, claim_step, log_key_for
from buildfarm.model.names import to_safe
from buildfarm.model.types import AptSource, BuildKind, BuildState, OutputKind, StepKind
from buildfarm.state.db import alembic_config, upgrade
from buildfarm.state.models import Base, Build, Step, StepQueue, TenantUsage

from farmkit import make_test_context
from migrationkit import BUILD, STEP, EarlierFarm, farm_at_0011

__all__ = ["farm_at_0011"]  # the fixture, imported for this module's tests


def test_migrations_match_the_models(database_url: str) -> None:
    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_an_upgrade_gives_earlier_builds_their_domain_columns(database_url: str, tmp_path: Path) -> None:
    """0009: a farm upgraded from 0008 holding builds reads them back through the engine: image
    outputs (``image:<reference>`` before) have kind ``image``, the staging apt line is a
    structured source, a READY step taken back from a lost attempt is marked so.  A downgrade
    writes the old encodings back exactly."""
    command.upgrade(alembic_config(database_url), "0008")
    reference = "registry.example:5000/proj/main/1/web:latest"
    staging_line = "deb [trusted=yes] http://127.0.0.1:8080/pulp/content/proj/main/_staging/1/ stable main"
    old = create_engine(database_url)
    try:
        tables = MetaData()
        tables.reflect(old, only=["builds", "steps", "step_outputs"])
        builds, steps, outputs = (
            tables.tables["builds"],
            tables.tables["steps"],
            tables.tables["step_outputs"],
        )
        step = STEP | {"input_key": "c" * 64, "attempt": 1, "error": None}
        build = BUILD | {"staging_source": staging_line}
        lost_lease = "attempt 1 on node1 lost its lease"
        files = ["lib_1.0_amd64.deb", "lib-udeb_1.0_amd64.udeb", "lib_1.0_amd64.buildinfo"]
        with old.begin() as conn:
            conn.execute(insert(builds).values(build))
            conn.execute(
                insert(steps),
                [
                    step | {"id": 1, "name": "lib", "state": "succeeded", "kind": "package"},
                    step | {"id": 2, "name": "web", "state": "succeeded", "kind": "image"},
                    step
                    | {"id": 3, "name": "lost", "state": "ready", "kind": "package", "error": lost_lease},
                    step | {"id": 4, "name": "fresh", "state": "ready", "kind": "package", "attempt": 0},
                ],
            )
            conn.execute(
                insert(outputs),
                [
                    *({"step_id": 1, "attempt": 1, "filename": f, "sha256": f"{i}" * 64, "size": i}
                      for i, f in enumerate(files)),
                    {"step_id": 2, "attempt": 1, "filename": f"image:{reference}", "sha256": "9" * 64,
                     "size": 9},
                ],
            )  # fmt: skip
            before = {
                "steps": conn.execute(select(steps).where(steps.c.id < 4).order_by(steps.c.id))
                .mappings()
                .all(),
                "step_outputs": conn.execute(select(outputs).order_by(outputs.c.id)).mappings().all(),
            }
    finally:
        old.dispose()

    ctx = make_test_context(tmp_path, database_url)  # upgrades to the head
    try:
        view = control.show_build(ctx, 1)
        assert (view.kind, view.state) == (BuildKind.NIGHTLY, BuildState.RUNNING)
        by_name = {s.name: s for s in view.steps}
        assert sorted((o["filename"], o["kind"]) for o in by_name["lib"].outputs) == [
            ("lib-udeb_1.0_amd64.udeb", OutputKind.UDEB),
            ("lib_1.0_amd64.buildinfo", OutputKind.BUILDINFO),
            ("lib_1.0_amd64.deb", OutputKind.DEB),
        ]
        assert by_name["web"].outputs == [
            {"filename": reference, "sha256": "9" * 64, "size": 9, "kind": "image"}
        ]
        with ctx.db.session() as session:
            assert pushed_reference(session, 2) == reference
            assert session.get_one(Build, 1).staging_source == AptSource(
                url="http://127.0.0.1:8080/pulp/content/proj/main/_staging/1/",
                suite="stable",
                components=("main",),
                trusted=True,
            )
            lost = {s.name: (s.kind, s.attempt_lost) for s in session.scalars(select(Step))}
            assert lost == {
                "lib": (StepKind.PACKAGE, False),
                "web": (StepKind.IMAGE, False),
                "lost": (StepKind.PACKAGE, True),
                "fresh": (StepKind.PACKAGE, False),
            }
        claim = claim_step(ctx, 4, "node1")  # the engine hands the staging source to the step as is
        assert claim is not None and claim.staging_source is not None
        assert claim.staging_source.line() == staging_line
    finally:
        ctx.db.dispose()

    command.downgrade(alembic_config(database_url), "0008")
    old = create_engine(database_url)
    try:
        with old.connect() as conn:
            assert conn.execute(select(builds.c.staging_source)).scalar_one() == staging_line
            assert (
                conn.execute(select(outputs).order_by(outputs.c.id)).mappings().all()
                == before["step_outputs"]
            )
            claimed = conn.execute(
                select(steps.c.name, steps.c.error).where(steps.c.state == "running")
            ).all()
            assert claimed == [("fresh", None)]
    finally:
        old.dispose()


def test_an_upgrade_to_0012_lets_earlier_ready_steps_run_anywhere(
    farm_at_0011: EarlierFarm, tmp_path: Path
) -> None:
    """0012: ready steps of a farm upgraded from 0011 require no label (any node takes them, as
    before), a node's ticket claims them through the fair share, and their tenant is charged."""
    farm_at_0011.add_build(
        [
            {"id": i, "name": f"pkg{i}", "input_key": f"{i}" * 64, "priority": i, "attempt": 0,
             "state": "ready", "ready_at": farm_at_0011.now}
            for i in (1, 2)
        ]
    )  # fmt: skip
    ctx = make_test_context(tmp_path, farm_at_0011.url)  # upgrades to the head
    try:
        with ctx.db.session() as session:
            assert {s.requires for s in session.scalars(select(Step))} == {""}
        claim = claim_next(ctx, 1, "node1", frozenset())
        assert claim is not None and claim.step_id == 2  # the critical path first, whatever it names
        with ctx.db.session() as session:
            assert session.get_one(TenantUsage, ("proj", "alice")).pass_seconds > 0
    finally:
        ctx.db.dispose()
    command.downgrade(alembic_config(farm_at_0011.url), "0011")


def test_an_upgrade_keeps_earlier_steps_for_the_nodes_own_architecture(farm_at_0011: EarlierFarm) -> None:
    """0013: steps recorded before architectures existed build for the node's own architecture,
    with their ``all`` binaries, in their build's environment: exactly what they did."""
    farm_at_0011.add_build(
        [{"id": 1, "name": "lib", "input_key": "c" * 64, "state": "ready", "attempt": 0}], project="p"
    )
    upgrade(farm_at_0011.url)
    engine = create_engine(farm_at_0011.url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(Step.host_arch, Step.arch_all, Step.environment_id)).one()
    finally:
        engine.dispose()
    assert tuple(row) == ("", True, None)
    command.downgrade(alembic_config(farm_at_0011.url), "0011")


def test_an_upgrade_to_0017_puts_earlier_open_steps_in_their_queues(
    database_url: str, tmp_path: Path
) -> None:
    """0017: the unfinished steps of a farm upgraded from 0016 join the queue of their labels,
    build kind and tenant (finished ones join none), so a ticket claims them in the fair order:
    the release build's step first, whatever the ticket names."""
    command.upgrade(alembic_config(database_url), "0016")
    farm = EarlierFarm(database_url)
    ready = {"state": "ready", "attempt": 0, "ready_at": farm.now, "requires": "", "depends_on": []}
    farm.add_build(
        [
            ready | {"id": 1, "name": "lib", "input_key": "1" * 64},
            ready
            | {"id": 2, "name": "app", "input_key": "2" * 64, "state": "pending", "depends_on": ["lib"]},
            ready | {"id": 3, "name": "arm", "input_key": "3" * 64, "requires": "arch=arm64"},
            ready | {"id": 4, "name": "old", "input_key": "4" * 64, "state": "succeeded", "attempt": 1},
        ]
    )
    farm.add_build(
        [ready | {"id": 5, "build_id": 2, "name": "site", "input_key": "5" * 64}],
        id=2,
        kind="release",
        user="bob",
    )
    ctx = make_test_context(tmp_path, database_url)  # upgrades to the head
    try:
        with ctx.db.session() as session:
            queues = {
                step.name: None if queue is None else (queue.requires, queue.kind, queue.project, queue.user)
                for step, queue in session.execute(
                    select(Step, StepQueue).outerjoin(StepQueue, Step.queue_id == StepQueue.id)
                )
            }
        assert queues == {
            "lib": ("", "nightly", "proj", "alice"),
            "app": ("", "nightly", "proj", "alice"),
            "arm": ("arch=arm64", "nightly", "proj", "alice"),
            "old": None,
            "site": ("", "release", "proj", "bob"),
        }
        claim = claim_next(ctx, 1, "node1", frozenset())
        assert claim is not None and claim.step_id == 5
    finally:
        ctx.db.dispose()
    command.downgrade(alembic_config(database_url), "0016")


def test_an_upgrade_to_0020_gives_earlier_steps_their_safe_names(database_url: str, tmp_path: Path) -> None:
    """0020: each step of a farm upgraded from 0019 has its name made safe by ``names.to_safe``
    stored, so a claim keys its log as :func:`log_key_for` does; a downgrade drops the column."""
    command.upgrade(alembic_config(database_url), "0019")
    farm = EarlierFarm(database_url)
    odd = ["gcc-12", "lib_foo", "g++", "ünïcode", "日本", "emoji😀"]
    ready = {"state": "ready", "attempt": 0, "ready_at": farm.now, "requires": "", "depends_on": []}
    farm.add_build(
        [ready | {"id": n + 1, "name": name, "input_key": f"{n:064x}"} for n, name in enumerate(odd)]
    )
    ctx = make_test_context(tmp_path, database_url)  # upgrades to the head (0017's queues too)
    try:
        with ctx.db.session() as session:
            stored = dict(session.execute(select(Step.name, Step.safe_name)).all())
        assert stored == {name: to_safe(name) for name in odd}
        claim = claim_next(ctx, 1, "node1", frozenset())
        assert claim is not None
        assert claim.log_key == log_key_for(1, odd[claim.step_id - 1], 1)
    finally:
        ctx.db.dispose()
    command.downgrade(alembic_config(database_url), "0019")
    engine = create_engine(database_url)
    try:
        tables = MetaData()
        tables.reflect(engine, only=["steps"])
        assert "safe_name" not in tables.tables["steps"].c
    finally:
        engine.dispose()
