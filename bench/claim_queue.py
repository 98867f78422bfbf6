"""What one claim costs with a long queue, on SQLite and PostgreSQL.

A queue of 10,000 queued tasks over 50 projects (one project's burst of half of them, the
rest spread evenly; three tools, most tasks on one), two tasks running in every fifth
project, and a history of finished tasks (what a table holds after a while). Each claim is
timed on its own, then its task is finished outside the clock so that the queue stays put;
the cases take turns, one call each per round, so that the load of other jobs on the
machine hits them alike.

Side by side, on the same rows:
- ``fair``: the store's claim (priority, then the project with the fewest tasks running,
  FIFO within a project), for a worker of every tool and for a worker of one tool;
- ``fifo``: the baseline a user would otherwise write, the oldest queued task first
  (``ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED``), which lets one project's burst starve
  every other project;
- ``run``: the Run side, ``create_task`` with the concurrency and queue limits on, against
  the same insert with both limits off.

    PYTHONPATH=. python bench/claim_queue.py [--postgres postgresql://...] [--queued 10000]
        [--projects 50] [--history 50000] [--claims 300] [--without-queue-indexes]

PostgreSQL is measured when --postgres or FLUXRUN_TEST_DATABASE_URL names a server; the run
uses a schema of its own and drops it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import percentile, postgres_schema  # noqa: E402

from sqlalchemy import insert, select, text, update  # noqa: E402

from fluxrun.status import Status  # noqa: E402
from fluxrun.store import open_store  # noqa: E402
from fluxrun.store.schema import tasks  # noqa: E402
from fluxrun.store.sql import SqlTaskStore  # noqa: E402

TOOLS = ["desertPixel/Flat-Pixel-Art-FLUX", "black-forest-labs/flux-2-flex-t2i", "fluxrun/Realism-FLUX"]
CPS = Decimal("0.000585")


def _row(project_id: int, tool: str, status: Status, now: float) -> dict[str, Any]:
    return {
        "uuid": secrets.token_hex(16), "token": secrets.token_hex(15), "project_id": project_id, "tool": tool,
        "parameters": '{"prompt": "p"}', "callback_url": "", "status": status.value, "attempt": 0,
        "debugoutput": "", "debugerror": "", "output_key": secrets.token_hex(20), "cps": str(CPS),
        "createtime": now, "kill_requested": False,
        "lease_owner": "bench" if status.running else None,
        "lease_expires_at": now + 3600 if status.running else None,
    }


def fill(store: SqlTaskStore, queued: int, projects: int, history: int) -> list[int]:
    """The rows of the scenario; the project ids."""
    ids = [store.create_project(f"p{i}", "apikey").id for i in range(projects)]
    now = time.time()
    rows: list[dict[str, Any]] = []
    for n in range(history):  # finished tasks first: the oldest ids, as in a real table
        rows.append(_row(ids[n % projects], TOOLS[0], Status.POSTPROCESS_END, now))
    burst = queued // 2
    for n in range(queued):
        project = ids[0] if n < burst else ids[1 + n % (projects - 1)]
        tool = TOOLS[0] if n % 10 < 8 else TOOLS[1 + n % 2]
        rows.append(_row(project, tool, Status.QUEUE, now))
    for project in ids[::5]:
        rows += [_row(project, TOOLS[0], Status.START, now) for _ in range(2)]
    with store.engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(insert(tasks), rows[start:start + 5000])
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE tasks"))
            conn.execute(text("VACUUM ANALYZE projects"))
    else:
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return ids


def fifo_claim(store: SqlTaskStore, now: float) -> int | None:
    """The baseline: the oldest queued task, whoever's."""
    query = (select(tasks.c.id).where(tasks.c.status == Status.QUEUE.value).order_by(tasks.c.id).limit(1)
             .with_for_update(skip_locked=True))
    with store._write() as conn:
        task_id = conn.execute(query).scalar()
        if task_id is not None:
            conn.execute(update(tasks).where(tasks.c.id == task_id)
                         .values(status=Status.ACCEPT.value, attempt=tasks.c.attempt + 1, lease_owner="bench",
                                 lease_expires_at=now + 30, accepttime=now))
    return task_id


def finish(store: SqlTaskStore, task_id: int) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == task_id)
                     .values(status=Status.POSTPROCESS_END.value, lease_owner=None, lease_expires_at=None))


def timed(action: Callable[[], int | None], store: SqlTaskStore, finish_it: bool = True) -> float:
    started = time.perf_counter()
    task_id = action()
    elapsed = (time.perf_counter() - started) * 1000
    if finish_it and task_id is not None:
        finish(store, task_id)
    return elapsed


def interleaved(cases: dict[str, Callable[[], int | None]], store: SqlTaskStore, count: int,
                finish_it: bool = True) -> dict[str, list[float]]:
    """Each case once per round, so that load from other jobs on the machine hits every case alike."""
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(count):
        for name, action in cases.items():
            results[name].append(timed(action, store, finish_it))
    return results


def old_indexes(store: SqlTaskStore) -> None:
    """The task indexes as they were before the queue's own (migration 0002), to show what
    the claim's statements cost without them."""
    with store.engine.begin() as conn:
        for name in ("ix_tasks_running", "ix_tasks_queued_tool", "ix_tasks_queued"):
            conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(text("CREATE INDEX ix_tasks_claim ON tasks (status, tool, id)"))


def measure(url: str, queued: int, projects: int, history: int, claims: int,
            without_queue_indexes: bool = False) -> dict[str, list[float]]:
    store = open_store(url)
    assert isinstance(store, SqlTaskStore)
    store.migrate()
    if without_queue_indexes:
        old_indexes(store)
    try:
        ids = fill(store, queued, projects, history)
        now = time.time()
        cases: dict[str, Callable[[], int | None]] = {
            "fifo": lambda: fifo_claim(store, now),
            "fair (every tool)": lambda: _id(store.claim("bench", 30, now, tools=TOOLS)),
            "fair (one tool)": lambda: _id(store.claim("bench", 30, now, tools=TOOLS[1:2])),
            "fair (tools=None)": lambda: _id(store.claim("bench", 30, now)),
        }
        results = interleaved(cases, store, claims)
        results.update(run_side(store, ids[-1], claims))
        return results
    finally:
        store.close()


def run_side(store: SqlTaskStore, project_id: int, count: int) -> dict[str, list[float]]:
    """create_task with both limits on (high enough to accept) and with both off."""
    cases: dict[str, Callable[[], int | None]] = {
        "run (limits on)": lambda: store.create_task(project_id, TOOLS[0], {"prompt": "p"}, CPS,
                                                     concurrency_limit=10**6, queue_limit=10**6).id,
        "run (limits off)": lambda: store.create_task(project_id, TOOLS[0], {"prompt": "p"}, CPS,
                                                      concurrency_limit=0, queue_limit=0).id,
    }
    return interleaved(cases, store, count, finish_it=False)


def _id(lease: Any) -> int | None:
    return lease.task_id if lease is not None else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=os.environ.get("FLUXRUN_TEST_DATABASE_URL"))
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--projects", type=int, default=50)
    parser.add_argument("--history", type=int, default=50_000)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print the raw timings as JSON too")
    parser.add_argument("--without-queue-indexes", action="store_true",
                        help="drop the queue's partial indexes first (the indexes of migration 0002)")
    args = parser.parse_args()

    runs: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        runs["sqlite"] = measure(f"sqlite:///{folder}/bench.db", args.queued, args.projects, args.history,
                                 args.claims, args.without_queue_indexes)
    if args.postgres:
        with postgres_schema(args.postgres) as url:
            runs["postgres"] = measure(url, args.queued, args.projects, args.history, args.claims,
                                       args.without_queue_indexes)

    print(f"{args.queued} queued tasks over {args.projects} projects, {args.history} finished; "
          f"{args.claims} calls per case" + ("; WITHOUT the queue's indexes" if args.without_queue_indexes else ""))
    print(f"{'database':9} {'case':20} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for database, results in runs.items():
        for name, values in results.items():
            print(f"{database:9} {name:20} {statistics.median(values):8.2f} {percentile(values, 90):8.2f} "
                  f"{percentile(values, 99):8.2f}")
        base = statistics.median(results["fifo"])
        ratios = [f"{name.removeprefix('fair ')}/fifo {statistics.median(v) / base:.2f}x"
                  for name, v in results.items() if name.startswith("fair")]
        if "run (limits off)" in results:
            ratios.append("run limits on/off "
                          f"{statistics.median(results['run (limits on)']) / statistics.median(results['run (limits off)']):.2f}x")
        print(f"{database:9} ratios  p50 " + ", ".join(ratios))
    if args.json:
        print(json.dumps(runs))


if __name__ == "__main__":
    main()
