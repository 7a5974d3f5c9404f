"""builds, steps, outputs

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "builds",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project", sa.String(length=100), nullable=False),
        sa.Column("branch", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("environment_id", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("publish_claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("staging_source", sa.Text(), nullable=True),
        sa.Column("published_url", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_builds_branch"), ["branch"], unique=False)
        batch_op.create_index(batch_op.f("ix_builds_project"), ["project"], unique=False)
        batch_op.create_index(batch_op.f("ix_builds_state"), ["state"], unique=False)

    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("build_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("source_sha256", sa.String(length=64), nullable=False),
        sa.Column("tree_hash", sa.String(length=64), nullable=False),
        sa.Column("input_key", sa.String(length=64), nullable=False),
        sa.Column("depends_on", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("reused_from", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=200), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("log_key", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["build_id"], ["builds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("build_id", "name"),
    )
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_steps_build_id"), ["build_id"], unique=False)
        batch_op.create_index("ix_steps_input_key_state", ["input_key", "state"], unique=False)
        batch_op.create_index("ix_steps_state_lease", ["state", "lease_expires_at"], unique=False)

    op.create_table(
        "step_outputs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=300), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["step_id"], ["steps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("step_id", "filename"),
    )
    with op.batch_alter_table("step_outputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_step_outputs_sha256"), ["sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_step_outputs_step_id"), ["step_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("step_outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_step_outputs_step_id"))
        batch_op.drop_index(batch_op.f("ix_step_outputs_sha256"))

    op.drop_table("step_outputs")
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_index("ix_steps_state_lease")
        batch_op.drop_index("ix_steps_input_key_state")
        batch_op.drop_index(batch_op.f("ix_steps_build_id"))

    op.drop_table("steps")
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_builds_state"))
        batch_op.drop_index(batch_op.f("ix_builds_project"))
        batch_op.drop_index(batch_op.f("ix_builds_branch"))

    op.drop_table("builds")
