"""The first schema: projects, nonces, tasks, outputs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("api_key", sa.String(64), nullable=False, unique=True),
        sa.Column("api_secret", sa.String(128), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "nonces",
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False),
        sa.Column("forget_after", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("project_id", "nonce"),
    )
    op.create_index("ix_nonces_forget_after", "nonces", ["forget_after"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("token", sa.String(64), nullable=False, unique=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("tool", sa.String(200), nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("callback_url", sa.Text, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.Float, nullable=True),
        sa.Column("debugoutput", sa.Text, nullable=False),
        sa.Column("debugerror", sa.Text, nullable=False),
        sa.Column("pexit", sa.Integer, nullable=True),
        sa.Column("progress", sa.Text, nullable=True),
        sa.Column("output_key", sa.String(64), nullable=False),
        sa.Column("cps", sa.String(32), nullable=False),
        sa.Column("elapsed", sa.Float, nullable=True),
        sa.Column("createtime", sa.Float, nullable=False),
        sa.Column("accepttime", sa.Float, nullable=True),
        sa.Column("assigntime", sa.Float, nullable=True),
        sa.Column("preprocessstarttime", sa.Float, nullable=True),
        sa.Column("preprocessendtime", sa.Float, nullable=True),
        sa.Column("starttime", sa.Float, nullable=True),
        sa.Column("endtime", sa.Float, nullable=True),
        sa.Column("postprocessstarttime", sa.Float, nullable=True),
        sa.Column("postprocessendtime", sa.Float, nullable=True),
        sa.Column("canceltime", sa.Float, nullable=True),
        sa.Column("kill_requested", sa.Boolean, nullable=False),
    )
    op.create_index("ix_tasks_claim", "tasks", ["status", "tool", "id"])
    op.create_index("ix_tasks_project", "tasks", ["project_id", "id"])
    op.create_index("ix_tasks_lease", "tasks", ["status", "lease_expires_at"])
    op.create_table(
        "outputs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("accesskey", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("task_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("outputs")
    op.drop_table("tasks")
    op.drop_table("nonces")
    op.drop_table("projects")
