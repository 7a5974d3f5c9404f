"""build packing lease: a build recorded before its trees are packed says until when its submit
is known to be packing them (issue 16)

* ``builds.packing_until``: set when a submit records a build whose steps wait for source
  packages still to be made, renewed while it packs, cleared when every one is stored.  Past it,
  the submitting process is gone (killed, its machine lost): the reaper fails the build, so no
  step waits forever for a source package nobody is making.  Builds recorded before 0018 were
  packed before they were recorded: none has one.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("builds") as batch_op:
        batch_op.add_column(sa.Column("packing_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("builds") as batch_op:
        batch_op.drop_column("packing_until")
