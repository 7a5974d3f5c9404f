"""tickets and virtual time: re-sent tickets keep a step's age; claims share no row (issue 16)

* ``steps.ticket_at``: when the reaper last re-sent a ticket for the ready step (NULL: only the
  one sent when it became ready, at ``ready_at``).  The reaper used to move ``ready_at`` instead,
  which made a step that had waited long look new to the fair-share order.
* ``tenant_usage.start_seconds``: the virtual start of the tenant's last step.  The farm's
  virtual time is the largest of them, read without a lock at each claim, instead of one row
  that every claim locked (claims serialized on it).  The old farm row ("", "") keeps its value
  as its start, so the farm's virtual time does not move back.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch_op:
        batch_op.add_column(sa.Column("ticket_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("tenant_usage") as batch_op:
        batch_op.add_column(sa.Column("start_seconds", sa.Float(), nullable=False, server_default="0"))
    op.execute("UPDATE tenant_usage SET start_seconds = pass_seconds WHERE project = '' AND \"user\" = ''")


def downgrade() -> None:
    with op.batch_alter_table("tenant_usage") as batch_op:
        batch_op.drop_column("start_seconds")
    with op.batch_alter_table("steps") as batch_op:
        batch_op.drop_column("ticket_at")
