"""steps: the indexes on build_id, two where there were three (issue 16, item 6)

* ``ix_steps_build_id`` dropped: the unique (build_id, name) starts with build_id, so every
  lookup by build (and the cascade of a deleted build) has an index still.
* ``ix_steps_build_state`` (build_id, state, 0017) becomes ``ix_steps_build_open``, partial on
  PostgreSQL: the steps not in a terminal state only.  The advance after each finish counts a
  build's open steps: an index-only scan of those, where it read every step of the build from
  the table; its pending steps are found in it as before.  A step changes state three times on
  its way (released, claimed, finished), each time writing a new entry in every index of the
  table: one index fewer each time, two at a finish (a terminal step has no entry in the
  partial one).  On SQLite the index is as it was (renamed).

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

OPEN_ONLY = "state NOT IN ('cancelled', 'failed', 'skipped', 'succeeded')"


def upgrade() -> None:
    op.drop_index("ix_steps_build_id", table_name="steps")
    op.drop_index("ix_steps_build_state", table_name="steps")
    op.create_index(
        "ix_steps_build_open", "steps", ["build_id", "state"], postgresql_where=sa.text(OPEN_ONLY)
    )


def downgrade() -> None:
    op.drop_index("ix_steps_build_open", table_name="steps")
    op.create_index("ix_steps_build_state", "steps", ["build_id", "state"])
    op.create_index("ix_steps_build_id", "steps", ["build_id"])
