"""Numbers for metrics, read from the tasks table at scrape time.

Every API process answers a scrape from the database, so all of them report the same
numbers for the shared queue. Two GROUP BY queries: unfinished tasks per tool and status
(an index range on ix_tasks_claim), and finished tasks per tool, status, exit code and
histogram bucket (one pass over the finished tasks; the buckets are made cumulative here).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from itertools import accumulate
from typing import Any
from contextlib import AbstractContextManager

from sqlalchemy import Connection, case, func, literal_column, select

from fluxrun.status import RUNNING, TERMINAL, Status
from fluxrun.store.base import DurationHistogram, Outcome, TaskCounts
from fluxrun.store.schema import tasks

_UNFINISHED = [s.value for s in Status if not s.terminal]
_RUNNING = {s.value for s in RUNNING}
_FINISHED = [s.value for s in TERMINAL]


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

    def duration_histograms(self, bounds: tuple[float, ...]) -> list[DurationHistogram]:
        # elapsed for a success; else end - start, which is NULL when it never started: 0.
        ended = func.coalesce(tasks.c.postprocessendtime, tasks.c.canceltime)
        duration = func.coalesce(tasks.c.elapsed, ended - tasks.c.starttime, _number(0.0))
        # Each task's bucket: the index of the first bound it is within (len(bounds): above all).
        # Constants are inlined, not bound, so PostgreSQL sees the same expression in GROUP BY.
        bucket = case(
            *[(duration <= _number(float(bound)), _number(index)) for index, bound in enumerate(bounds)],
            else_=_number(len(bounds)),
        )
        query = (
            select(tasks.c.tool, tasks.c.status, tasks.c.pexit, bucket, func.count(), func.sum(duration))
            .where(tasks.c.status.in_(_FINISHED))
            .group_by(tasks.c.tool, tasks.c.status, tasks.c.pexit, bucket)
        )
        # (tool, outcome) -> [tasks per bucket..., total seconds]; exit codes fold together.
        sums: dict[tuple[str, Outcome], list[float]] = {}
        with self._read() as conn:
            for tool, status, pexit, index, count, seconds in conn.execute(query):
                row = sums.setdefault((tool, _outcome(status, pexit)), [0.0] * (len(bounds) + 2))
                row[int(index)] += count
                row[-1] += float(seconds or 0.0)
        histograms = []
        for (tool, outcome), row in sorted(sums.items()):
            cumulative = list(accumulate(int(n) for n in row[:-1]))
            histograms.append(DurationHistogram(
                tool=tool,
                outcome=outcome,
                buckets=tuple(zip(bounds, cumulative[:-1])),
                count=cumulative[-1],
                total_seconds=row[-1],
            ))
        return histograms


def _number(value: float | int) -> Any:
    return literal_column(repr(value))


def _outcome(status: str, pexit: int | None) -> Outcome:
    if status == Status.CANCEL.value:
        return "cancelled"
    return "succeeded" if pexit == 0 else "failed"
