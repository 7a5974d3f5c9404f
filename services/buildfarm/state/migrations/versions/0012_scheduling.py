"""scheduling: fair share of tenants, node labels, the labels a step requires (issue 16)

``tenant_usage`` keeps each (project, user)'s virtual time for the fair share inside a priority
class; ``nodes`` what each worker reports of itself (labels, last heartbeat); ``steps.requires``
the labels a step needs ("" for none, so every step of an earlier farm runs anywhere, as before).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_usage",
        sa.Column("project", sa.String(length=100), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("pass_seconds", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", "user"),
    )
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_nodes_last_seen", "nodes", ["last_seen"])
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("requires", sa.String(length=500), nullable=False, server_default=""))
        batch.add_column(sa.Column("unrunnable_since", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_steps_state_ready_at", "steps", ["state", "ready_at"])


def downgrade() -> None:
    op.drop_index("ix_steps_state_ready_at", table_name="steps")
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("unrunnable_since")
        batch.drop_column("requires")
    op.drop_index("ix_nodes_last_seen", table_name="nodes")
    op.drop_table("nodes")
    op.drop_table("tenant_usage")
