"""Where each output file is stored: every attempt of a task writes under a key of its own.

An attempt that lost its task (its worker paused, the lease was taken over) may still have
an upload in flight; under the task's one output key it could overwrite a file that the
attempt which took over stored and recorded. Rows written before this revision keep NULL:
their files are under the task's output_key, as that release wrote them.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outputs", sa.Column("storage_key", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outputs") as batch:
        batch.drop_column("storage_key")
