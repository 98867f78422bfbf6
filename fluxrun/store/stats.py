"""Numbers for metrics: unfinished tasks from the tasks table, finished ones from the
task_durations table that the transactions ending tasks keep.

Every API process answers a scrape from the database, so all of them report the same
numbers for the shared queue. Unfinished tasks per tool and status: one GROUP BY over the
unfinished tasks. The duration histogram: one read of task_durations, whose size is
tools x outcomes x buckets, so a scrape costs the same at a thousand finished tasks or a
hundred million. Each place a task ends calls ``count_finished`` in its own transaction; the
task's duration, outcome and bucket are computed in SQL from its row, by the same expressions
``scan_duration_histograms`` (the from-scratch reference the tests and the benchmark compare
with) groups every finished task by.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from itertools import accumulate
from typing import Any

from sqlalchemy import Connection, Select, bindparam, case, func, literal_column, select
from sqlalchemy.dialects import postgresql, sqlite

from fluxrun.status import RUNNING, TERMINAL, Status
from fluxrun.store.base import DURATION_BUCKETS, DurationHistogram, TaskCounts
from fluxrun.store.schema import task_durations, tasks

_UNFINISHED = [s.value for s in Status if not s.terminal]
_RUNNING = {s.value for s in RUNNING}
_FINISHED = [s.value for s in TERMINAL]


def _number(value: float | int) -> Any:
    # Constants are inlined, not bound, so PostgreSQL sees the same expression in GROUP BY.
    return literal_column(repr(value))


def _text(value: str) -> Any:
    return literal_column(f"'{value}'")


# A finished task's duration: elapsed for a success; else end - start, which is NULL when it
# never started: 0.
_DURATION = func.coalesce(
    tasks.c.elapsed, func.coalesce(tasks.c.postprocessendtime, tasks.c.canceltime) - tasks.c.starttime, _number(0.0)
)
_OUTCOME = case(
    (tasks.c.status == _text(Status.CANCEL.value), _text("cancelled")),
    (tasks.c.pexit == _number(0), _text("succeeded")),
    else_=_text("failed"),
)
# The index of the first bound the duration is within (len(DURATION_BUCKETS): above all).
_BUCKET = case(
    *[(_DURATION <= _number(float(bound)), _number(index)) for index, bound in enumerate(DURATION_BUCKETS)],
    else_=_number(len(DURATION_BUCKETS)),
)


def _grouped(*where: Any) -> Select[Any]:
    """(tool, outcome, bucket, tasks, seconds) of the finished tasks matching ``where``."""
    return (
        select(tasks.c.tool, _OUTCOME, _BUCKET, func.count(), func.sum(_DURATION))
        .where(tasks.c.status.in_(_FINISHED), *where)
        .group_by(tasks.c.tool, _OUTCOME, _BUCKET)
    )


def count_finished(conn: Connection, task_ids: Sequence[int]) -> None:
    """Add the tasks just ended (in ``conn``'s transaction, after their final write) to
    task_durations. Unfinished ids are ignored; an id must be counted once, when it ends.

    One upsert: concurrent ends of tasks with the same key add up (PostgreSQL: the second
    waits for the first's row lock, then adds to what it committed; SQLite: writers take turns).
    Keys come in a fixed order so two transactions ending several tasks each (lease expiry in
    two API processes) lock the rows in the same order and cannot deadlock; callers count last
    in their transaction, so the row is held only until the commit.
    """
    if task_ids:
        conn.execute(_upsert(conn.dialect.name), {"task_ids": list(task_ids)})


@lru_cache(maxsize=2)
def _upsert(dialect_name: str) -> Any:
    rows = _grouped(tasks.c.id.in_(bindparam("task_ids", expanding=True)))
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    insert = dialect.insert(task_durations).from_select(
        ["tool", "outcome", "bucket", "finished", "seconds"], rows.order_by(tasks.c.tool, _OUTCOME, _BUCKET)
    )
    return insert.on_conflict_do_update(
        index_elements=[task_durations.c.tool, task_durations.c.outcome, task_durations.c.bucket],
        set_={
            "finished": task_durations.c.finished + insert.excluded.finished,
            "seconds": task_durations.c.seconds + insert.excluded.seconds,
        },
    )


def scan_duration_histograms(conn: Connection) -> list[DurationHistogram]:
    """The histogram computed from scratch, reading every finished task: what task_durations
    must always equal (up to the order of the float additions in the sums)."""
    return _histograms(conn.execute(_grouped()))


class StatsQueries:
    """The metrics' side of the TaskStore, mixed into SqlTaskStore."""

    _read: Callable[[], AbstractContextManager[Connection]]

    def task_counts(self) -> dict[str, TaskCounts]:
        query = (
            select(tasks.c.tool, tasks.c.status, func.count())
            .where(tasks.c.status.in_(_UNFINISHED))
            .group_by(tasks.c.tool, tasks.c.status)
        )
        queued: dict[str, int] = defaultdict(int)
        running: dict[str, int] = defaultdict(int)
        with self._read() as conn:
            for tool, status, count in conn.execute(query):
                if status in _RUNNING:
                    running[tool] += count
                else:
                    queued[tool] += count
        return {tool: TaskCounts(queued[tool], running[tool]) for tool in sorted({*queued, *running})}

    def duration_histograms(self) -> list[DurationHistogram]:
        query = select(
            task_durations.c.tool, task_durations.c.outcome, task_durations.c.bucket,
            task_durations.c.finished, task_durations.c.seconds,
        )
        with self._read() as conn:
            return _histograms(conn.execute(query))


def _histograms(rows: Iterable[Any]) -> list[DurationHistogram]:
    """Rows of (tool, outcome, bucket, tasks, seconds) as cumulative histograms."""
    bounds = DURATION_BUCKETS
    # (tool, outcome) -> [tasks per bucket..., total seconds]
    sums: dict[tuple[str, str], list[float]] = {}
    for tool, outcome, index, count, seconds in rows:
        row = sums.setdefault((tool, outcome), [0.0] * (len(bounds) + 2))
        row[int(index)] += count
        row[-1] += float(seconds or 0.0)
    histograms = []
    for (tool, outcome), row in sorted(sums.items()):
        cumulative = list(accumulate(int(n) for n in row[:-1]))
        histograms.append(DurationHistogram(
            tool=tool,
            outcome=outcome,  # type: ignore[arg-type]  # one of Outcome's, by _OUTCOME
            buckets=tuple(zip(bounds, cumulative[:-1])),
            count=cumulative[-1],
            total_seconds=row[-1],
        ))
    return histograms
