"""step layer: the dependency layer outcome of a step's attempt, for ``build show`` (issue 15)

One nullable column on ``steps``: ``layer``, "hit:<key>", "miss:<key>", "none", "none:<key>" or
"failed" (the key: the layer's short id); rows from before, and steps of runners without
layers, stay NULL.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch_op:
        batch_op.add_column(sa.Column("layer", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch_op:
        batch_op.drop_column("layer")
