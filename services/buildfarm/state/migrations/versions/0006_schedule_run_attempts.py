"""schedule runs that recover (issue 7 follow-up): attempts, retries, one build per run

A run's ``attempt`` fences what each start may record and ``retry_at`` says when a run that
failed for a temporary reason is tried again.  ``builds.schedule_slot`` (unique,
``<schedule>@<slot>``) ties a build to the slot it was started for, so a slot started again after
its scheduler died finds the build the dead one submitted instead of submitting a second.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("schedule_runs", sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))
    op.add_column("schedule_runs", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("builds", sa.Column("schedule_slot", sa.String(length=150), nullable=True))
    op.create_index("ix_builds_schedule_slot", "builds", ["schedule_slot"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_builds_schedule_slot", table_name="builds")
    with op.batch_alter_table("builds") as batch:
        batch.drop_column("schedule_slot")
    with op.batch_alter_table("schedule_runs") as batch:
        batch.drop_column("retry_at")
        batch.drop_column("attempt")
