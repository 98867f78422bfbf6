"""Queue policy: a priority and a concurrency limit per project, and the queue's own index.

``ix_tasks_claim`` (status, tool, id) covered every task ever made and could not give the
oldest queued task of a project. The new indexes are partial: they hold the queued tasks
(by project and age, and by project, tool and age) and the running ones (by project) alone,
so they stay as small as the queue (fluxrun.store.schema says why queries spell their
conditions literally).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

QUEUED_SQL = "status = 'task_queue'"
RUNNING_SQL = (
    "status IN ('task_accept', 'task_assign', 'task_preprocess_start', 'task_preprocess_end', 'task_start', "
    "'task_output', 'task_end')"
)


def upgrade() -> None:
    op.add_column("projects", sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
    op.add_column("projects", sa.Column("concurrency_limit", sa.Integer, nullable=True))
    op.drop_index("ix_tasks_claim", "tasks")
    queued = {"sqlite_where": sa.text(QUEUED_SQL), "postgresql_where": sa.text(QUEUED_SQL)}
    op.create_index("ix_tasks_queued", "tasks", ["project_id", "id"], **queued)
    op.create_index("ix_tasks_queued_tool", "tasks", ["project_id", "tool", "id"], **queued)
    op.create_index("ix_tasks_running", "tasks", ["project_id"],
                    sqlite_where=sa.text(RUNNING_SQL), postgresql_where=sa.text(RUNNING_SQL))


def downgrade() -> None:
    for name in ("ix_tasks_running", "ix_tasks_queued_tool", "ix_tasks_queued"):
        op.drop_index(name, "tasks")
    op.create_index("ix_tasks_claim", "tasks", ["status", "tool", "id"])
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("concurrency_limit")
        batch.drop_column("priority")
