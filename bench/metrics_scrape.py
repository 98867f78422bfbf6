"""How long a Prometheus scrape of /metrics takes with many tasks, on SQLite and PostgreSQL.

The shared numbers (queue depth and running tasks per tool, the duration histogram of
finished tasks, live workers and their GPU memory) are read from the database at each
scrape by api/metrics.py's StoreCollector. Measured side by side in one run:
- ``collector``: StoreCollector.collect(), the database part of a scrape (the unfinished
  tasks' GROUP BY, the task_durations table for the histogram, the live workers);
- ``scanned``: the same collector with the histogram computed as before migration 0006, by
  a GROUP BY over every finished task (store.stats.scan_duration_histograms);
- ``histogram`` / ``hist-scan``: the histogram's part of those two alone (the rest of a
  collector's time is the unfinished tasks' GROUP BY, which reads the queue's tasks only);
- ``scrape``: the whole /metrics body (generate_latest: the collector plus process metrics);
- ``naive``: the baseline a user would otherwise write, reading every task's status, tool,
  exit code and times and counting in Python.

    PYTHONPATH=. python bench/metrics_scrape.py [--tasks 10000] [--postgres postgresql://...]

The tasks are a plausible mix (90 % finished: mostly succeeded, some failed or cancelled;
9 % queued; 1 % running; three tools) plus 8 workers, inserted in bulk; the finished ones
are then added to task_durations by store.stats.count_finished, the statement each
transaction that ends a task runs (in batches of 2,000 ids here), and the histogram is
checked equal to the scan before anything is timed. PostgreSQL is
measured when --postgres or FLUXRUN_TEST_DATABASE_URL names a server, in a schema of its
own that is dropped afterwards; its tables are ANALYZEd first, as autovacuum would.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import postgres_schema  # noqa: E402

from prometheus_client import generate_latest  # noqa: E402
from sqlalchemy import insert, select, text  # noqa: E402

from fluxrun.api.metrics import Metrics, StoreCollector  # noqa: E402
from fluxrun.status import RUNNING, Status  # noqa: E402
from fluxrun.store import open_store  # noqa: E402
from fluxrun.store.base import DurationHistogram, GpuMemory, TaskStore, WorkerRecord  # noqa: E402
from fluxrun.store.schema import tasks  # noqa: E402
from fluxrun.store.stats import count_finished, scan_duration_histograms  # noqa: E402

TOOLS = ("desertPixel/Flat-Pixel-Art-FLUX", "black-forest-labs/flux-2-flex-t2i", "fluxrun/Realism-FLUX")
REPEATS = 30
FINISHED = (Status.POSTPROCESS_END.value, Status.CANCEL.value)
NULLABLE = ("pexit", "elapsed", "starttime", "postprocessendtime", "canceltime", "lease_owner", "lease_expires_at")


def fill(store: TaskStore, engine: Any, count: int) -> None:
    rng = random.Random(7)
    project = store.create_project("bench", "apikey")
    now = time.time()
    rows = []
    running = [s.value for s in RUNNING]
    for index in range(count):
        created = now - rng.uniform(0, 86400)
        roll = rng.random()
        row: dict[str, Any] = {
            "uuid": f"{index:08d}-0000-0000-0000-000000000000", "token": secrets.token_hex(15),
            "project_id": project.id, "tool": rng.choice(TOOLS), "parameters": '{"prompt":"p"}',
            "callback_url": "", "attempt": 1, "debugoutput": "", "debugerror": "", "output_key": secrets.token_hex(20),
            "cps": "0.000585", "createtime": created, "kill_requested": False, "handed_back": 0,
            **{column: None for column in NULLABLE},  # one shape for every row: a single executemany
        }
        if roll < 0.09:
            row.update(status=Status.QUEUE.value, attempt=0)
        elif roll < 0.10:
            row.update(status=rng.choice(running), starttime=created + 1, lease_owner="w/1", lease_expires_at=now + 30)
        elif roll < 0.97:
            elapsed = rng.lognormvariate(2.0, 1.0)
            row.update(status=Status.POSTPROCESS_END.value, pexit=0, elapsed=elapsed, starttime=created + 1,
                       postprocessendtime=created + 2 + elapsed)
        elif roll < 0.99:
            row.update(status=Status.POSTPROCESS_END.value, pexit=1, starttime=created + 1,
                       postprocessendtime=created + 1 + rng.uniform(0, 60), debugerror="boom")
        else:
            row.update(status=Status.CANCEL.value, canceltime=created + 5)
        rows.append(row)
    with engine.begin() as conn:
        for start in range(0, len(rows), 2000):
            conn.execute(insert(tasks), rows[start:start + 2000])
        finished = conn.execute(select(tasks.c.id).where(tasks.c.status.in_(FINISHED))).scalars().all()
        for start in range(0, len(finished), 2000):
            count_finished(conn, finished[start:start + 2000])
    for index in range(8):
        store.register_worker(WorkerRecord(
            id=f"gpu-{index}/1", host=f"gpu-{index}", pid=1, tools=TOOLS, models="real", device="cuda",
            state="busy" if index % 2 else "idle", task_id=None, started_at=now, last_seen=now, alive_until=now + 15,
            gpu=GpuMemory(allocated=30 << 30, reserved=40 << 30, total=80 << 30),
        ))


class Scanning:
    """The store as a scrape read it before migration 0006: the histogram from every finished task."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def duration_histograms(self) -> list[DurationHistogram]:
        with self._store._read() as conn:
            return scan_duration_histograms(conn)


def naive(engine: Any) -> int:
    """Read every task and count in Python: what the collector's GROUP BYs replace."""
    counted: dict[tuple[str, str], int] = {}
    with engine.connect() as conn:
        for row in conn.execute(select(tasks.c.tool, tasks.c.status, tasks.c.pexit, tasks.c.elapsed,
                                       tasks.c.starttime, tasks.c.postprocessendtime, tasks.c.canceltime)):
            counted[(row.tool, row.status)] = counted.get((row.tool, row.status), 0) + 1
    return len(counted)


def timed(function: Any) -> list[float]:
    function()  # warm: connections, statement caches
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure(name: str, url: str, count: int) -> None:
    store = open_store(url)
    store.migrate()
    engine = store.engine  # type: ignore[attr-defined]
    filled = time.perf_counter()
    fill(store, engine, count)
    filled = time.perf_counter() - filled
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE tasks"))
            conn.execute(text("ANALYZE task_durations"))
    kept, scanned = store.duration_histograms(), Scanning(store).duration_histograms()
    assert [(h.tool, h.outcome, h.buckets, h.count) for h in kept] == [
        (h.tool, h.outcome, h.buckets, h.count) for h in scanned], "task_durations differs from the scan"
    collector = StoreCollector(store)
    before = StoreCollector(Scanning(store))  # type: ignore[arg-type]
    metrics = Metrics(store)
    results = {
        "collector": timed(lambda: list(collector.collect())),
        "scanned": timed(lambda: list(before.collect())),
        "histogram": timed(store.duration_histograms),
        "hist-scan": timed(Scanning(store).duration_histograms),
        "scrape": timed(lambda: generate_latest(metrics.registry)),
        "naive": timed(lambda: naive(engine)),
    }
    size = len(generate_latest(metrics.registry))
    load = os.getloadavg()
    print(f"{name}: {count} tasks (inserted in {filled:.1f} s), body {size} bytes, {REPEATS} scrapes each; "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    for what, values in results.items():
        values.sort()
        print(f"  {what:10s} p50 {statistics.median(values):7.2f} ms   p95 {values[int(len(values) * 0.95) - 1]:7.2f} ms")
    p50 = {what: statistics.median(values) for what, values in results.items()}
    print(f"  p50 ratios: scanned/collector {p50['scanned'] / p50['collector']:.1f}x   "
          f"hist-scan/histogram {p50['hist-scan'] / p50['histogram']:.0f}x   "
          f"naive/collector {p50['naive'] / p50['collector']:.1f}x")
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--postgres", default=os.environ.get("FLUXRUN_TEST_DATABASE_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        measure("sqlite", f"sqlite:///{folder}/bench.db", args.tasks)
    if args.postgres:
        with postgres_schema(args.postgres) as url:
            measure("postgres", url, args.tasks)


if __name__ == "__main__":
    main()
