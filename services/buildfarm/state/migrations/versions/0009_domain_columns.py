"""domain columns: output kind, structured staging source, lost attempts (issue 14)

Three values the farm encoded in other columns get columns of their own; existing rows are
converted:

* ``step_outputs.kind`` (deb, udeb, buildinfo, image): an image output was the filename
  ``image:<reference>``; it becomes the reference, of kind ``image``.  A file's kind is its
  suffix (the runners never accepted others);
* ``builds.staging_source`` is the staging repository's fields as JSON instead of the apt line
  the steps parsed back;
* ``steps.attempt_lost``: a READY step whose ``error`` was set had been taken back from a lost
  attempt (lease ran out, pod vanished) and may follow that attempt's builder again.

The conversion is written out here, not imported from the model, so the migration stays what
it was when later code changes.

Revision ID: 0009
Revises: 0008
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_IMAGE_PREFIX = "image:"
_KIND_OF_OUTPUT = """
    CASE
        WHEN filename LIKE 'image:%' THEN 'image'
        WHEN filename LIKE '%.udeb' THEN 'udeb'
        WHEN filename LIKE '%.buildinfo' THEN 'buildinfo'
        WHEN filename LIKE '%.deb' THEN 'deb'
    END
"""


def _staging_fields(line: str) -> dict[str, Any]:
    """The fields of an apt line the farm wrote: ``deb [trusted=yes] URL SUITE COMPONENT...``
    (or ``[signed-by=PATH]``, or no options)."""
    words = line.split()
    if len(words) < 3 or words[0] != "deb":
        raise RuntimeError(f"0009: builds.staging_source {line!r} is not an apt line the farm wrote")
    trusted, signed_by, rest = False, None, words[1:]
    if rest[0] == "[trusted=yes]":
        trusted, rest = True, rest[1:]
    elif rest[0].startswith("[signed-by=") and rest[0].endswith("]"):
        signed_by, rest = rest[0][len("[signed-by=") : -1], rest[1:]
    if len(rest) < 2:
        raise RuntimeError(f"0009: builds.staging_source {line!r} names no URL and suite")
    return {
        "url": rest[0],
        "suite": rest[1],
        "components": rest[2:],
        "trusted": trusted,
        "signed_by": signed_by,
        "sources": False,
    }


def _staging_line(fields: dict[str, Any]) -> str:
    if fields.get("signed_by") is not None:
        options = f"[signed-by={fields['signed_by']}] "
    else:
        options = "[trusted=yes] " if fields.get("trusted", True) else ""
    return " ".join(
        ["deb", f"{options}{fields['url']}", fields.get("suite", "./"), *fields.get("components", [])]
    )


def upgrade() -> None:
    conn = op.get_bind()

    with op.batch_alter_table("step_outputs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=20), nullable=True))
    op.execute(f"UPDATE step_outputs SET kind = {_KIND_OF_OUTPUT}")
    unknown = (
        conn.execute(sa.text("SELECT filename FROM step_outputs WHERE kind IS NULL LIMIT 3")).scalars().all()
    )
    if unknown:
        raise RuntimeError(
            f"0009: step outputs of no known kind (not .deb, .udeb, .buildinfo or image:): {unknown}"
        )
    op.execute(
        sa.text(
            "UPDATE step_outputs SET filename = substr(filename, :start) WHERE kind = 'image'"
        ).bindparams(start=len(_IMAGE_PREFIX) + 1)
    )
    with op.batch_alter_table("step_outputs", schema=None) as batch_op:
        batch_op.alter_column("kind", existing_type=sa.String(length=20), nullable=False)

    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.alter_column("staging_source", new_column_name="staging_line", existing_type=sa.Text())
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("staging_source", sa.JSON(), nullable=True))
    builds = sa.table("builds", sa.column("id", sa.Integer()), sa.column("staging_source", sa.JSON()))
    staged = conn.execute(sa.text("SELECT id, staging_line FROM builds WHERE staging_line IS NOT NULL")).all()
    for build_id, line in staged:
        conn.execute(
            sa.update(builds).where(builds.c.id == build_id).values(staging_source=_staging_fields(line))
        )
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.drop_column("staging_line")

    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("attempt_lost", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.execute(
        sa.text(
            "UPDATE steps SET attempt_lost = :lost WHERE state = 'ready' AND error IS NOT NULL"
        ).bindparams(lost=True)
    )


def downgrade() -> None:
    conn = op.get_bind()

    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_column("attempt_lost")

    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("staging_line", sa.Text(), nullable=True))
    builds = sa.table(
        "builds",
        sa.column("id", sa.Integer()),
        sa.column("staging_source", sa.JSON()),
        sa.column("staging_line", sa.Text()),
    )
    staged = conn.execute(
        sa.select(builds.c.id, builds.c.staging_source).where(builds.c.staging_source.is_not(None))
    )
    for build_id, fields in staged.all():
        line = _staging_line(dict(fields))
        conn.execute(sa.update(builds).where(builds.c.id == build_id).values(staging_line=line))
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.drop_column("staging_source")
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.alter_column("staging_line", new_column_name="staging_source", existing_type=sa.Text())

    op.execute(
        sa.text("UPDATE step_outputs SET filename = :prefix || filename WHERE kind = 'image'").bindparams(
            prefix=_IMAGE_PREFIX
        )
    )
    with op.batch_alter_table("step_outputs", schema=None) as batch_op:
        batch_op.drop_column("kind")
