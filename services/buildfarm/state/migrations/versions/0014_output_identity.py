"""output identity: reuse dependents whose dependencies' outputs did not change (issue 16 part 4)

Four nullable columns on ``steps``; rows from before stay NULL, and a step whose keys are NULL
is reused only by its input key, as before:

* ``own_key``: the step's own inputs (source, environment, options, image spec) without its
  dependencies, fixed at submit;
* ``output_identity``: the normalised digest of what the step built (its packages without build
  dates and ``.buildinfo``; its images' digests), recorded with its outputs;
* ``resolved_key``: at release, ``own_key`` with the output identities of every step it depends
  on (transitively); a success of the same resolved key is reused;
* ``reuse_reason``: one line saying why a step was reused although its input key was new.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch_op:
        batch_op.add_column(sa.Column("own_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("output_identity", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("resolved_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("reuse_reason", sa.Text(), nullable=True))
        batch_op.create_index("ix_steps_resolved_key_state", ["resolved_key", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch_op:
        batch_op.drop_index("ix_steps_resolved_key_state")
        batch_op.drop_column("reuse_reason")
        batch_op.drop_column("resolved_key")
        batch_op.drop_column("output_identity")
        batch_op.drop_column("own_key")
