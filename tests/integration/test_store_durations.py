"""The duration histogram behind /metrics (fluxrun_task_duration_seconds), kept in the
task_durations table by the transactions that end tasks, on SQLite and PostgreSQL.

Whatever way a task ends, and after migration 0006 filled the table from a database's
finished tasks, the histogram equals two from-scratch computations: the SQL scan over every
finished task that a scrape used to run (fluxrun.store.stats.scan_duration_histograms) and
a plain Python bucketing of the durations the test made. Durations sit on the bucket
bounds and just past them. A scrape no longer reads the tasks table.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text

import fluxrun.store
from fluxrun.errors import LeaseLost
from fluxrun.status import Status
from fluxrun.store import open_store
from fluxrun.store.base import DURATION_BUCKETS, DurationHistogram, Lease, TaskStore
from fluxrun.store.stats import scan_duration_histograms
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

PIXEL = "desertPixel/Flat-Pixel-Art-FLUX"
FLUX2 = "black-forest-labs/flux-2-flex-t2i"
REALISM = "fluxrun/Realism-FLUX"
CPS = Decimal("0.000585")
T0 = 1_700_000_000.0  # a whole number: T0 + d - T0 == d for the durations below
# On each bound, just past it, and past them all.
EDGES = (0.0, 0.5, 0.5000001, 1.0, 2.5, 5.0, 60.0, 60.0001, 600.0, 600.0001, 3600.0)

def _span(seconds: float) -> float:
    """What the database computes for a task that ran from T0 for ``seconds``: (T0 + s) - T0,
    which rounds where ``seconds`` has more digits than T0 leaves room for."""
    return (T0 + seconds) - T0


Summary = dict[tuple[str, str], tuple[tuple[tuple[float, int], ...], int, float]]


def _expected(ended: Iterable[tuple[str, str, float]]) -> Summary:
    """(tool, outcome, duration) of each ended task, bucketed in Python: a bound counts the
    tasks at most that long."""
    per_bucket: dict[tuple[str, str], list[int]] = {}
    totals: dict[tuple[str, str], float] = {}
    for tool, outcome, duration in ended:
        counts = per_bucket.setdefault((tool, outcome), [0] * (len(DURATION_BUCKETS) + 1))
        counts[bisect_left(DURATION_BUCKETS, duration)] += 1
        totals[tool, outcome] = totals.get((tool, outcome), 0.0) + duration
    summary: Summary = {}
    for key, counts in per_bucket.items():
        cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
        summary[key] = (tuple(zip(DURATION_BUCKETS, cumulative[:-1])), cumulative[-1], totals[key])
    return summary


def _summary(histograms: list[DurationHistogram]) -> Summary:
    return {(h.tool, h.outcome): (h.buckets, h.count, h.total_seconds) for h in histograms}


def _assert_same(seen: Summary, expected: Summary) -> None:
    assert seen.keys() == expected.keys()
    for key, (buckets, count, total) in expected.items():
        assert seen[key][:2] == (buckets, count), key
        assert seen[key][2] == pytest.approx(total, rel=1e-12), key  # sums: the order of additions may differ


def _scanned(store: TaskStore) -> Summary:
    with store.engine.connect() as conn:  # type: ignore[attr-defined]
        return _summary(scan_duration_histograms(conn))


def _check(store: TaskStore, ended: list[tuple[str, str, float]]) -> None:
    expected = _expected(ended)
    _assert_same(_scanned(store), expected)
    _assert_same(_summary(store.duration_histograms()), expected)


def _claimed(store: TaskStore, project_id: int, tool: str, now: float = T0) -> Lease:
    task = store.create_task(project_id, tool, {"prompt": "p"}, CPS)
    lease = store.claim("w/1", 30, now)
    assert lease is not None and lease.task_id == task.id  # nothing else is queued
    return lease


def _started(store: TaskStore, project_id: int, tool: str, at: float = T0) -> Lease:
    lease = _claimed(store, project_id, tool, at)
    store.advance(lease, Status.START, at)
    return lease


def test_every_way_a_task_ends_is_counted_as_a_scan_counts_it(store: TaskStore) -> None:
    project = store.create_project("p", "apikey")
    ended: list[tuple[str, str, float]] = []

    # Successes: their elapsed, on and around every edge, over two tools.
    for index, elapsed in enumerate(EDGES):
        tool = PIXEL if index % 2 else FLUX2
        store.finish_success(_started(store, project.id, tool), [], elapsed=elapsed, now=T0 + 4000)
        ended.append((tool, "succeeded", elapsed))
    # Failures: start to end, whatever the exit code.
    for seconds, pexit in ((1.0, 1), (30.0, 1), (60.0001, 2), (600.0, 137)):
        store.finish_failure(_started(store, project.id, REALISM), "boom", T0 + seconds, pexit=pexit)
        ended.append((REALISM, "failed", _span(seconds)))
    # A failure before the task started (its model did not load): 0 s.
    store.finish_failure(_claimed(store, project.id, PIXEL), "no model", T0 + 9)
    ended.append((PIXEL, "failed", 0.0))
    # A task ended through advance() (no exit code: failed), as the interface allows.
    store.advance(_started(store, project.id, REALISM), Status.POSTPROCESS_END, T0 + 20.0)
    ended.append((REALISM, "failed", 20.0))
    # Killed while running: start to the kill; its worker's late success is refused, not counted.
    killed = _started(store, project.id, PIXEL)
    assert store.kill(project.id, killed.task_id, T0 + 5.0) is not None
    with pytest.raises(LeaseLost):
        store.finish_success(killed, [], elapsed=4.0, now=T0 + 6)
    ended.append((PIXEL, "cancelled", 5.0))
    # Lost leases: given up after the last attempt, two tools in one expiry (start to expiry).
    for tool in (PIXEL, FLUX2):
        _started(store, project.id, tool)
    assert [e.requeued for e in store.expire_leases(T0 + 120.0, max_attempts=1)] == [False, False]
    ended += [(PIXEL, "failed", 120.0), (FLUX2, "failed", 120.0)]
    # A lease lost before the last attempt, and a hand-back: queued again, not ended.
    requeued = _started(store, project.id, FLUX2)
    assert [e.requeued for e in store.expire_leases(T0 + 120.0, max_attempts=2)] == [True]
    _check(store, ended)
    again = store.claim("w/2", 30, T0 + 200)
    assert again is not None and again.task_id == requeued.task_id
    assert store.hand_back(again, T0 + 201, "stopping")
    # Cancelled in the queue (the requeued one's start was cleared with its attempt), killed in it.
    assert store.cancel_queued(project.id, requeued.task_id, T0 + 300) is not None
    queued = store.create_task(project.id, REALISM, {"prompt": "p"}, CPS)
    assert store.kill(project.id, queued.id, T0 + 301) is not None
    ended += [(FLUX2, "cancelled", 0.0), (REALISM, "cancelled", 0.0)]
    # Cancelling or killing what already ended changes nothing.
    assert store.cancel_queued(project.id, queued.id, T0 + 302) is None
    assert store.kill(project.id, killed.task_id, T0 + 303) is None

    _check(store, ended)
    assert store.task_counts() == {}  # every task made here ended


def test_tasks_ending_at_once_are_all_counted(store: TaskStore) -> None:
    # Every end adds to the same row: an upsert that lost a concurrent update would show here
    # (PostgreSQL runs these transactions at once; SQLite one after another).
    project = store.create_project("p", "apikey")
    leases = [_started(store, project.id, PIXEL) for _ in range(24)]
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def finish(mine: list[Lease]) -> None:
        try:
            start.wait()
            for lease in mine:
                store.finish_success(lease, [], elapsed=1.0, now=T0 + 10)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(leases[i::6],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    _check(store, [(PIXEL, "succeeded", 1.0)] * 24)
    [histogram] = store.duration_histograms()
    assert (histogram.count, histogram.total_seconds) == (24, 24.0)


def test_a_scrape_reads_no_task(store: TaskStore) -> None:
    project = store.create_project("p", "apikey")
    for elapsed in (0.2, 3.0, 700.0):
        store.finish_success(_started(store, project.id, PIXEL), [], elapsed=elapsed, now=T0 + 1)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = store.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", seen)
    try:
        [histogram] = store.duration_histograms()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert histogram.count == 3
    assert statements and not [s for s in statements if re.search(r"\btasks\b", s)], statements


def _old_task(n: int, tool: str, status: str, **columns: Any) -> dict[str, Any]:
    """A tasks row as release 0005 wrote it."""
    return {
        "uuid": f"00000000-0000-4000-8000-{n:012d}", "token": f"tok{n:027d}", "project_id": 1, "tool": tool,
        "parameters": "{}", "callback_url": "", "status": status, "attempt": 1, "lease_owner": None,
        "lease_expires_at": None, "debugoutput": "", "debugerror": "", "pexit": None, "progress": None,
        "output_key": f"{n:040x}", "cps": "0.000585", "elapsed": None, "createtime": T0, "accepttime": None,
        "assigntime": None, "preprocessstarttime": None, "preprocessendtime": None, "starttime": None,
        "endtime": None, "postprocessstarttime": None, "postprocessendtime": None, "canceltime": None,
        "kill_requested": False, "handed_back": 0, **columns,
    }


def _old_rows() -> tuple[list[dict[str, Any]], list[tuple[str, str, float]]]:
    """Tasks of every end (and some not ended) with durations on the edges, and what they count as."""
    rows: list[dict[str, Any]] = []
    ended: list[tuple[str, str, float]] = []
    end = "task_postprocess_end"
    for d in EDGES:
        tool = (PIXEL, FLUX2, REALISM)[len(rows) % 3]
        rows.append(_old_task(len(rows) + 1, tool, end, pexit=0, elapsed=d, starttime=T0, postprocessendtime=T0 + 99))
        ended.append((tool, "succeeded", d))
        rows.append(_old_task(len(rows) + 1, tool, end, pexit=1, starttime=T0, postprocessendtime=T0 + d))
        ended.append((tool, "failed", _span(d)))
        rows.append(_old_task(len(rows) + 1, tool, "task_cancel", kill_requested=True, starttime=T0, canceltime=T0 + d))
        ended.append((tool, "cancelled", _span(d)))
    rows.append(_old_task(len(rows) + 1, PIXEL, "task_cancel", attempt=0, canceltime=T0 + 3))  # in the queue
    rows.append(_old_task(len(rows) + 1, PIXEL, end, pexit=None, postprocessendtime=T0 + 3))  # no start, no code
    ended += [(PIXEL, "cancelled", 0.0), (PIXEL, "failed", 0.0)]
    rows.append(_old_task(len(rows) + 1, PIXEL, "task_queue", attempt=0))
    rows.append(_old_task(len(rows) + 1, FLUX2, "task_output", starttime=T0, lease_owner="w/1",
                          lease_expires_at=T0 + 30))
    return rows, ended


def test_the_migration_fills_the_histogram_from_the_tasks_already_finished(database_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(fluxrun.store.__file__).parent / "migrations"))
    rows, ended = _old_rows()
    engine = create_engine(database_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0005")
        conn.execute(text("INSERT INTO projects (name, mode, api_key, api_secret, created_at, webhook_secret) "
                          "VALUES ('old', 'apikey', :key, NULL, :t, 'whsec_old')"), {"key": "a" * 32, "t": T0})
        columns = ", ".join(rows[0])
        conn.execute(text(f"INSERT INTO tasks ({columns}) VALUES ({', '.join(':' + c for c in rows[0])})"), rows)
    engine.dispose()

    store = open_store(database_url)
    try:
        store.migrate()
        _check(store, ended)
        # And counting goes on from there: the old running task ends (its lease expired), the
        # old queued one is cancelled, then a new one runs.
        assert [e.requeued for e in store.expire_leases(T0 + 60.0, max_attempts=1)] == [False]
        assert store.cancel_queued(1, len(rows) - 1, T0 + 65) is not None
        store.finish_success(_started(store, 1, FLUX2), [], elapsed=2.5, now=T0 + 70)
        _check(store, ended + [(FLUX2, "failed", 60.0), (PIXEL, "cancelled", 0.0), (FLUX2, "succeeded", 2.5)])
    finally:
        store.close()
