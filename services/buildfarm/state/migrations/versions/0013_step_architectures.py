"""step architectures: the architecture a package step builds for (issue 16, part 3)

A manifest's ``architectures`` plans one step per architecture of a source package; the step
row says which (``host_arch``; "" for the steps before, built for the node's own architecture),
whether it builds the ``Architecture: all`` binaries too (``arch_all``; true before: every step
did), and the environment its input key names when that is not the build's (a cross
environment; NULL before).  Existing rows keep exactly their old meaning.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("host_arch", sa.String(length=64), server_default="", nullable=False))
        batch.add_column(sa.Column("arch_all", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch.add_column(sa.Column("environment_id", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("environment_id")
        batch.drop_column("arch_all")
        batch.drop_column("host_arch")
