"""task_runs: outcome of each retention sweep and backup run (issue 17)

The scheduler records how each periodic run ended, so a metrics scrape (and the dashboard)
reads the last result and its time from the database, whichever process ran it and however
often processes restarted since.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task", sa.String(length=50), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_task_runs_task_finished_at", "task_runs", ["task", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_task_runs_task_finished_at", table_name="task_runs")
    op.drop_table("task_runs")
