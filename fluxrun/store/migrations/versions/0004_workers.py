"""The worker registry, and attempts handed back by stopping workers.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("tools", sa.Text, nullable=False),
        sa.Column("models", sa.String(16), nullable=False),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("task_id", sa.Integer, nullable=True),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("alive_until", sa.Float, nullable=False),
        sa.Column("gpu_allocated", sa.BigInteger, nullable=True),
        sa.Column("gpu_reserved", sa.BigInteger, nullable=True),
        sa.Column("gpu_total", sa.BigInteger, nullable=True),
    )
    op.add_column("tasks", sa.Column("handed_back", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("handed_back")
    op.drop_table("workers")
