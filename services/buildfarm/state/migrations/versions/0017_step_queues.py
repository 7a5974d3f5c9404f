"""step queues: a claim reads one row per (labels, kind, tenant) queue, not every ready step (issue 16)

* ``step_queues``: one row per (requires, build kind, project, user): the scheduler's queues.
* ``steps.queue_id``: the queue a step waits in while ready (advance sets it when it makes
  the step ready), with two partial indexes of the ready steps only: a queue's next step
  (critical path, then age) and its oldest are each one index probe;
* ``ix_steps_build_state``: a build's pending or unfinished steps, which every advance reads,
  without scanning the build's other steps (or every pending step of the farm).

Every step that is not finished yet joins its queue here (a step made ready before 0017 is
claimed in the same fair order as a new one); finished steps stay without one.

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

READY_ONLY = "state = 'ready'"
OPEN = "('pending', 'ready', 'running')"


def upgrade() -> None:
    op.create_table(
        "step_queues",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("requires", sa.String(length=500), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("project", sa.String(length=100), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("requires", "kind", "project", "user"),
    )
    with op.batch_alter_table("steps") as batch_op:
        batch_op.add_column(sa.Column("queue_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_steps_queue_id_step_queues", "step_queues", ["queue_id"], ["id"])
    op.execute(
        'INSERT INTO step_queues (requires, kind, project, "user") '
        'SELECT DISTINCT steps.requires, builds.kind, builds.project, builds."user" '
        f"FROM steps JOIN builds ON steps.build_id = builds.id WHERE steps.state IN {OPEN}"
    )
    op.execute(
        "UPDATE steps SET queue_id = (SELECT step_queues.id FROM step_queues JOIN builds "
        "ON step_queues.kind = builds.kind AND step_queues.project = builds.project "
        'AND step_queues."user" = builds."user" '
        "WHERE builds.id = steps.build_id AND step_queues.requires = steps.requires) "
        f"WHERE steps.state IN {OPEN}"
    )
    op.create_index("ix_steps_build_state", "steps", ["build_id", "state"])
    op.create_index(
        "ix_steps_queue_next",
        "steps",
        ["queue_id", sa.text("priority DESC"), "ready_at", "id"],
        sqlite_where=sa.text(READY_ONLY),
        postgresql_where=sa.text(READY_ONLY),
    )
    op.create_index(
        "ix_steps_queue_oldest",
        "steps",
        ["queue_id", "ready_at"],
        sqlite_where=sa.text(READY_ONLY),
        postgresql_where=sa.text(READY_ONLY),
    )


def downgrade() -> None:
    op.drop_index("ix_steps_queue_oldest", table_name="steps")
    op.drop_index("ix_steps_queue_next", table_name="steps")
    op.drop_index("ix_steps_build_state", table_name="steps")
    with op.batch_alter_table("steps") as batch_op:
        batch_op.drop_constraint("fk_steps_queue_id_step_queues", type_="foreignkey")
        batch_op.drop_column("queue_id")
    op.drop_table("step_queues")
