"""The duration histogram of finished tasks as a table kept up to date, filled from the tasks
already finished. Tasks that processes of the previous release end after this migration,
before they are restarted, are not counted in it (their code does not know the table).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The bounds of this release's histogram (fluxrun.store.base.DURATION_BUCKETS), copied so this
# migration fills the table the same way whatever later releases change.
_BOUNDS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_BUCKET = " ".join(f"WHEN duration <= {bound!r} THEN {index}" for index, bound in enumerate(_BOUNDS))

# What the scrape used to compute (and fluxrun.store.stats computes as each task ends): the
# outcome, and the generation time: elapsed for a success, else end - start, 0 if it never started.
_BACKFILL = f"""
INSERT INTO task_durations (tool, outcome, bucket, finished, seconds)
SELECT tool, outcome, CASE {_BUCKET} ELSE {len(_BOUNDS)} END, COUNT(*), SUM(duration)
FROM (
    SELECT tool,
           CASE WHEN status = 'task_cancel' THEN 'cancelled' WHEN pexit = 0 THEN 'succeeded' ELSE 'failed' END
               AS outcome,
           COALESCE(elapsed, COALESCE(postprocessendtime, canceltime) - starttime, 0.0) AS duration
    FROM tasks
    WHERE status IN ('task_postprocess_end', 'task_cancel')
) AS ended
GROUP BY 1, 2, 3
"""


def upgrade() -> None:
    op.create_table(
        "task_durations",
        sa.Column("tool", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("bucket", sa.Integer, nullable=False),
        sa.Column("finished", sa.BigInteger, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("tool", "outcome", "bucket"),
    )
    # In the migration's transaction, which holds the set-up lock: nothing ends a task between
    # this count and the commit that makes the new release's counting start.
    op.execute(sa.text(_BACKFILL))


def downgrade() -> None:
    op.drop_table("task_durations")
