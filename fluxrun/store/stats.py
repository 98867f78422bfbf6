"""Numbers for metrics, read from the tasks table at scrape time.

Every API process answers a scrape from the database, so all of them report the same
numbers for the shared queue. Two GROUP BY queries: unfinished tasks per tool and status
(an index range on ix_tasks_claim), and finished tasks per tool, status and exit code with
one SUM per histogram bucket (one pass over the finished tasks).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import Connection, Float, case, cast, func, select

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
        ended = func.coalesce(tasks.c.postprocessendtime, tasks.c.canceltime)
        duration = cast(
            case(
                (tasks.c.elapsed.is_not(None), tasks.c.elapsed),
                (tasks.c.starttime.is_not(None), ended - tasks.c.starttime),
                else_=0.0,
            ),
            Float,
        )
        query = (
            select(
                tasks.c.tool,
                tasks.c.status,
                tasks.c.pexit,
                func.count(),
                func.coalesce(func.sum(duration), 0.0),
                *[func.sum(case((duration <= bound, 1), else_=0)) for bound in bounds],
            )
            .where(tasks.c.status.in_(_FINISHED))
            .group_by(tasks.c.tool, tasks.c.status, tasks.c.pexit)
        )
        # (tool, outcome) -> [count, total seconds, bucket counts...]; exit codes fold together.
        sums: dict[tuple[str, Outcome], list[float]] = {}
        with self._read() as conn:
            for tool, status, pexit, count, total, *under in conn.execute(query):
                row = sums.setdefault((tool, _outcome(status, pexit)), [0.0] * (2 + len(bounds)))
                for index, value in enumerate([count, total, *under]):
                    row[index] += float(value or 0)
        return [
            DurationHistogram(
                tool=tool,
                outcome=outcome,
                buckets=tuple(zip(bounds, (int(v) for v in row[2:]))),
                count=int(row[0]),
                total_seconds=row[1],
            )
            for (tool, outcome), row in sorted(sums.items())
        ]


def _outcome(status: str, pexit: int | None) -> Outcome:
    if status == Status.CANCEL.value:
        return "cancelled"
    return "succeeded" if pexit == 0 else "failed"
