"""uploads: source tarballs and image contexts sent through the API (issue 7 follow-up)

An upload that no build ever names had no row anywhere, so no retention sweep could find its
object.  One row per upload (sha256, size, when, who); the sweep deletes the unreferenced ones
older than ``retention_upload_hours`` by walking ``ix_uploads_uploaded_at``.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_uploads_uploaded_at", "uploads", ["uploaded_at"])
    op.create_index("ix_uploads_sha256", "uploads", ["sha256"])


def downgrade() -> None:
    op.drop_index("ix_uploads_sha256", table_name="uploads")
    op.drop_index("ix_uploads_uploaded_at", table_name="uploads")
    op.drop_table("uploads")
