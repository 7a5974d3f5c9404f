"""steps.safe_name: the step's name as one path segment, written with the row (issue 16)

A claim on PostgreSQL takes a step's lease and keys its attempt's log in one statement; the key
holds the step's name made safe (``names.to_safe``), which the statement computed with an
escaping of its own written in SQL (a second implementation of ``to_safe``).  The safe name is
now computed once, in Python, when the step row is written, and stored; the statement only
joins it into the key.  Rows from before get theirs here, from the same ``to_safe``.

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

from buildfarm.model.names import to_safe

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

BATCH = 1000
"""Steps read, and written back, in one page of the backfill."""


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch_op:
        batch_op.add_column(sa.Column("safe_name", sa.Text(), nullable=True))
    conn = op.get_bind()
    steps = sa.table("steps", sa.column("id", sa.Integer), sa.column("name"), sa.column("safe_name"))
    fill = (
        sa.update(steps).where(steps.c.id == sa.bindparam("step_id")).values(safe_name=sa.bindparam("safe"))
    )
    last = 0
    while True:  # pages by id: a farm of millions of steps is not read whole into memory
        page = conn.execute(
            sa.select(steps.c.id, steps.c.name).where(steps.c.id > last).order_by(steps.c.id).limit(BATCH)
        ).all()
        if not page:
            break
        conn.execute(fill, [{"step_id": step_id, "safe": to_safe(name)} for step_id, name in page])
        last = page[-1][0]
    with op.batch_alter_table("steps") as batch_op:
        batch_op.alter_column("safe_name", existing_type=sa.Text(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch_op:
        batch_op.drop_column("safe_name")
