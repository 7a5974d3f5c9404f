"""indexes the retention sweep's queries use (issue 7)

Without them, checking whether an expiring source tarball is still used reads the whole steps
table per batch of candidates, the "last failed/successful step per package and branch" rule
walks every newer step of a package, and "which kept step reuses this one" scans all steps.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_steps_name_state_build", "steps", ["name", "state", "build_id"])
    op.create_index("ix_steps_source_sha256", "steps", ["source_sha256"])
    op.create_index("ix_steps_reused_from", "steps", ["reused_from"])


def downgrade() -> None:
    op.drop_index("ix_steps_reused_from", table_name="steps")
    op.drop_index("ix_steps_source_sha256", table_name="steps")
    op.drop_index("ix_steps_name_state_build", table_name="steps")
