"""The catalogue of a backup: the build records of release builds and the farm's accounts, as JSON.

Rows are exported column by column from the tables' own definitions (so a column added by a
migration is carried along) inside one transaction, REPEATABLE READ on PostgreSQL: the builds,
steps, outputs, users, projects, grants and token hashes of one catalogue are one consistent
state of the farm.  Token secrets are never stored by the farm (only their sha256), so none is
in a backup either.  Every build input (``build_inputs``: the upstream tarballs, .dsc files and
3rd-party files builds were made from, kept forever) is in it too, whichever build used it, so a
restored farm still finds them by URL or source version and never downloads them again.

Which builds: release builds that succeeded (published).  A step of one of them that reused a
step of a build that is not backed up (a nightly build, typically: the release rebuilt nothing)
takes the producing step's outputs as its own in the catalogue (``reused_from`` cleared; the
same files, log and source): the restored release is whole without the nightly build, which is
never restored.  Reuse between two backed-up releases is kept as it is.

Restoring inserts the builds and steps with their ids (so ``<project>/<branch>/<build-id>``
paths and log keys stay) and merges the accounts by name: a fresh farm whose install already
created an admin keeps it, and the backed-up users, projects, grants and tokens join it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Column, Connection, Table, func, insert, select, text

from buildfarm.model.errors import ConflictError
from buildfarm.model.types import AptSource, BuildKind, BuildState, OutputKind
from buildfarm.state.db import Database
from buildfarm.state.models import (
    Build,
    BuildInput,
    Grant,
    Project,
    Step,
    StepOutput,
    Token,
    User,
    UTCDateTime,
)

CATALOGUE_FORMAT = 2
"""2: step outputs have a ``kind``, an image's filename is its reference; builds' staging sources
are JSON (migration 0009).  Format 1 (an image was ``image:<reference>``) is read as well."""
RELEASE = BuildKind.RELEASE
_LEGACY_IMAGE_PREFIX = "image:"  # format 1's image outputs

Row = dict[str, Any]

BUILDS: Table = Build.__table__  # type: ignore[assignment]
STEPS: Table = Step.__table__  # type: ignore[assignment]
OUTPUTS: Table = StepOutput.__table__  # type: ignore[assignment]
USERS: Table = User.__table__  # type: ignore[assignment]
TOKENS: Table = Token.__table__  # type: ignore[assignment]
PROJECTS: Table = Project.__table__  # type: ignore[assignment]
GRANTS: Table = Grant.__table__  # type: ignore[assignment]
INPUTS: Table = BuildInput.__table__  # type: ignore[assignment]


def _encode(table: Table, row: Any) -> Row:
    out: Row = {}
    for column in table.columns:
        value = row[column.name]
        if isinstance(value, dt.datetime):
            value = value.isoformat()
        elif isinstance(value, AptSource):
            value = value.to_json()
        out[column.name] = value
    return out


def upgrade_catalogue(catalogue: dict[str, Any]) -> dict[str, Any]:
    """A catalogue in this format: format 1's output rows get their kind (in place; returned)."""
    if catalogue.get("format") == 1:
        for output in catalogue.get("tables", {}).get("step_outputs", []):
            filename: str = output["filename"]
            if filename.startswith(_LEGACY_IMAGE_PREFIX):
                output["filename"] = filename.removeprefix(_LEGACY_IMAGE_PREFIX)
                output["kind"] = OutputKind.IMAGE
            else:
                output["kind"] = OutputKind.of_file(filename)
        catalogue["format"] = CATALOGUE_FORMAT
    return catalogue


def _decode(column: Column[Any], value: Any) -> Any:
    if value is not None and isinstance(column.type, UTCDateTime):
        return dt.datetime.fromisoformat(value)
    return value


def _rows(conn: Connection, table: Table, *where: Any) -> list[Row]:
    query = select(table).where(*where).order_by(table.c.id)
    return [_encode(table, row) for row in conn.execute(query).mappings()]


def export_catalogue(db: Database) -> dict[str, Any]:
    """The release builds' records and the accounts, read in one consistent transaction."""
    with db.engine.connect() as plain:
        conn = plain
        if plain.dialect.name == "postgresql":
            conn = plain.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            builds = _rows(conn, BUILDS, BUILDS.c.kind == RELEASE, BUILDS.c.state == BuildState.SUCCEEDED)
            build_ids = [b["id"] for b in builds]
            steps = _rows(conn, STEPS, STEPS.c.build_id.in_(build_ids)) if build_ids else []
            own = {s["id"] for s in steps}
            outside = sorted({s["reused_from"] for s in steps if s["reused_from"] not in (None, *own)})
            producers = {s["id"]: s for s in _rows(conn, STEPS, STEPS.c.id.in_(outside))} if outside else {}
            wanted = sorted(own | set(producers))
            outputs = _rows(conn, OUTPUTS, OUTPUTS.c.step_id.in_(wanted)) if wanted else []
            accounts = {
                "users": _rows(conn, USERS),
                "projects": _rows(conn, PROJECTS),
                "grants": _rows(conn, GRANTS),
                "tokens": _rows(conn, TOKENS),
            }
            inputs = _rows(conn, INPUTS)
    by_step: dict[int, list[Row]] = {}
    for output in outputs:
        by_step.setdefault(output["step_id"], []).append(output)
    kept_outputs = [o for o in outputs if o["step_id"] in own]
    for step in steps:
        producer = producers.get(step["reused_from"])
        if producer is None:
            continue
        # The producer's build is not backed up: the reused step becomes the producer.
        step["reused_from"] = None
        step["log_key"] = step["log_key"] or producer["log_key"]
        step["source_sha256"] = producer["source_sha256"]
        kept_outputs.extend({**o, "step_id": step["id"]} for o in by_step.get(producer["id"], []))
    for output in kept_outputs:
        output.pop("id", None)  # nothing refers to output ids: the restored farm numbers them
    return {
        "format": CATALOGUE_FORMAT,
        "tables": {
            "builds": builds,
            "steps": steps,
            "step_outputs": kept_outputs,
            "build_inputs": inputs,
            **accounts,
        },
    }


def _insertable(table: Table, row: Row, drop: Iterable[str] = ()) -> Row:
    """The row's values for the columns the table has now (unknown keys of an older farm dropped)."""
    skip = set(drop)
    return {c.name: _decode(c, row[c.name]) for c in table.columns if c.name in row and c.name not in skip}


def _insert(conn: Connection, table: Table, values: Row) -> int:
    key = conn.execute(insert(table).values(values)).inserted_primary_key
    assert key is not None
    return int(key[0])


def _merge_accounts(conn: Connection, tables: dict[str, list[Row]]) -> None:
    user_ids: dict[int, int] = {}
    for user in tables["users"]:
        found = conn.execute(select(USERS.c.id).where(USERS.c.name == user["name"])).scalar()
        if found is None:
            values = _insertable(USERS, user, ["id"])
            found = _insert(conn, USERS, values)
        user_ids[user["id"]] = int(found)
    project_ids: dict[int, int] = {}
    for project in tables["projects"]:
        found = conn.execute(select(PROJECTS.c.id).where(PROJECTS.c.name == project["name"])).scalar()
        if found is None:
            values = _insertable(PROJECTS, project, ["id"])
            found = _insert(conn, PROJECTS, values)
        project_ids[project["id"]] = int(found)
    for grant in tables["grants"]:
        user_id, project_id = user_ids[grant["user_id"]], project_ids[grant["project_id"]]
        exists = conn.execute(
            select(GRANTS.c.id).where(GRANTS.c.user_id == user_id, GRANTS.c.project_id == project_id)
        ).scalar()
        if exists is None:
            values = _insertable(GRANTS, grant, ["id"]) | {"user_id": user_id, "project_id": project_id}
            conn.execute(insert(GRANTS).values(values))
    for token in tables["tokens"]:
        if conn.execute(select(TOKENS.c.id).where(TOKENS.c.digest == token["digest"])).scalar() is None:
            values = _insertable(TOKENS, token, ["id"]) | {"user_id": user_ids[token["user_id"]]}
            conn.execute(insert(TOKENS).values(values))


def farm_has_builds(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(BUILDS)).scalar_one())


def import_catalogue(db: Database, catalogue: dict[str, Any], published: dict[int, str]) -> None:
    """Insert the catalogue's rows into an empty farm in one transaction.

    ``published`` is each build's apt line in the restored repository (its new ``published_url``).
    """
    tables: dict[str, list[Row]] = catalogue["tables"]
    with db.engine.begin() as conn:
        count = conn.execute(select(func.count()).select_from(BUILDS)).scalar_one()
        if count:
            raise ConflictError(f"the farm already has {count} builds: restore only into a fresh, empty farm")
        _merge_accounts(conn, tables)
        for build in tables["builds"]:
            values = _insertable(BUILDS, build) | {"staging_source": None}
            if build["id"] in published:
                values["published_url"] = published[build["id"]]
            conn.execute(insert(BUILDS).values(values))
        for step in tables["steps"]:
            # a restored build is finished: its steps are in no dispatch queue of this farm (the
            # queue rows are not backed up; advance puts a step that becomes ready in its queue)
            conn.execute(insert(STEPS).values(_insertable(STEPS, step) | {"queue_id": None}))
        for output in tables["step_outputs"]:
            conn.execute(insert(OUTPUTS).values(_insertable(OUTPUTS, output, ["id"])))
        for kept in tables.get("build_inputs", []):  # a catalogue made before 0008 has none
            exists = conn.execute(
                select(INPUTS.c.id).where(
                    INPUTS.c.sha256 == kept["sha256"], INPUTS.c.origin == kept["origin"]
                )
            ).first()
            if exists is None:
                conn.execute(insert(INPUTS).values(_insertable(INPUTS, kept, ["id"])))
        if conn.dialect.name == "postgresql":
            # Rows came with their ids: the next build and step must be numbered after them.
            for table in (BUILDS, STEPS):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table.name}), false)"
                    )
                )
