"""The queue's statements read its partial indexes (SQLite's plans, which need no statistics).

A partial index is used only when a statement carries its condition with the same constants;
a change to the statuses or to the statements that broke the match would leave the claim
scanning the whole history on every poll, with nothing else failing.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

from sqlalchemy import event

from fluxrun.store import open_store
from fluxrun.store.sql import SqlTaskStore

TOOLS = ["desertPixel/Flat-Pixel-Art-FLUX", "black-forest-labs/flux-2-flex-t2i"]


def test_claims_and_limits_read_the_queue_indexes(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'fluxrun.db'}")
    assert isinstance(store, SqlTaskStore)
    store.migrate()
    project = store.create_project("p", "apikey")
    for tool in TOOLS * 2:
        store.create_task(project.id, tool, {}, Decimal("0.1"))
    statements: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT") and "FROM tasks" in statement:
            statements.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    store.claim("w", 30, time.time(), tools=TOOLS)
    store.claim("w", 30, time.time())
    store.create_task(project.id, TOOLS[0], {}, Decimal("0.1"), concurrency_limit=100, queue_limit=100)
    event.remove(store.engine, "before_cursor_execute", record)

    plans: list[str] = []
    with store.engine.connect() as conn:
        for statement, parameters in statements:
            plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            plans.append(" | ".join(plan))
    store.close()
    text = "\n".join(plans)
    assert "USING INDEX ix_tasks_queued_tool (project_id=? AND tool=?)" in text  # a head per tool
    assert "USING INDEX ix_tasks_queued (project_id=?)" in text  # a head of any tool, a project's queued count
    assert "ix_tasks_running" in text  # the running counts
    assert "ix_tasks_project" not in text, text  # never a project's whole history
    assert all("SCAN tasks" not in plan or "USING" in plan for plan in plans), text  # no full table scan
