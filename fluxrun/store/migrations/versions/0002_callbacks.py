"""Callbacks: a webhook signing secret per project, and the deliveries table.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import base64
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("projects", sa.Column("webhook_secret", sa.String(128), nullable=True))
    # Projects made before callbacks were signed get a secret of their own now.
    projects = sa.table("projects", sa.column("id", sa.Integer), sa.column("webhook_secret", sa.String))
    conn = op.get_bind()
    for (project_id,) in conn.execute(sa.select(projects.c.id)).all():
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        conn.execute(sa.update(projects).where(projects.c.id == project_id).values(webhook_secret=secret))
    with op.batch_alter_table("projects") as batch:
        batch.alter_column("webhook_secret", existing_type=sa.String(128), nullable=False)

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("webhook_id", sa.String(64), nullable=False, unique=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False, unique=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("claimed_until", sa.Float, nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_attempt_at", sa.Float, nullable=True),
        sa.Column("delivered_at", sa.Float, nullable=True),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_due", "deliveries")
    op.drop_table("deliveries")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("webhook_secret")
