"""build_inputs: 3rd-party files builds were made from, kept forever (issue 12)

Every upstream tarball, .dsc or file a .dsc names that the farm fetched (or read beside a
``path`` tree) is stored content-addressed; one row per (object, origin) tells retention never
to delete the object and tells the next build it need not download it again.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "build_inputs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("origin", sa.String(length=2000), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_build_inputs_origin", "build_inputs", ["origin"])
    op.create_index("ix_build_inputs_sha256", "build_inputs", ["sha256"])


def downgrade() -> None:
    op.drop_index("ix_build_inputs_sha256", table_name="build_inputs")
    op.drop_index("ix_build_inputs_origin", table_name="build_inputs")
    op.drop_table("build_inputs")
