"""The worker registry in SQL: one row per worker process.

A worker inserts its row at start (replacing any row of an earlier process with the same
host/pid), refreshes it every few seconds with its state, its task and its GPU memory, and
marks it stopped when it exits cleanly. ``alive_until`` is written by the worker (a few of
its heartbeats ahead), so whoever reads the registry needs no setting to tell a live
worker from one that is gone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.engine import Row

from fluxrun.store.base import GpuMemory, WorkerRecord, WorkerState
from fluxrun.store.schema import workers


class WorkerQueries:
    """The registry's side of the TaskStore, mixed into SqlTaskStore."""

    _read: Callable[[], AbstractContextManager[Connection]]
    _write: Callable[[], AbstractContextManager[Connection]]

    def register_worker(self, worker: WorkerRecord) -> None:
        values = {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "tools": json.dumps(list(worker.tools)),
            "models": worker.models,
            "device": worker.device,
            "state": worker.state,
            "task_id": worker.task_id,
            "started_at": worker.started_at,
            "last_seen": worker.last_seen,
            "alive_until": worker.alive_until,
            **_gpu_columns(worker.gpu),
        }
        # Delete then insert: the same on both databases, and atomic in one transaction.
        with self._write() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker.id))
            conn.execute(insert(workers).values(**values))

    def worker_seen(
        self,
        worker_id: str,
        state: WorkerState,
        task_id: int | None,
        gpu: GpuMemory | None,
        now: float,
        alive_until: float,
    ) -> bool:
        values = {"state": state, "task_id": task_id, "last_seen": now, "alive_until": alive_until, **_gpu_columns(gpu)}
        with self._write() as conn:
            return conn.execute(update(workers).where(workers.c.id == worker_id).values(**values)).rowcount == 1

    def worker_stopped(self, worker_id: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(state="stopped", task_id=None, last_seen=now, alive_until=now)
            )

    def list_workers(self) -> list[WorkerRecord]:
        with self._read() as conn:
            rows = conn.execute(select(workers).order_by(workers.c.started_at.desc(), workers.c.id)).all()
        return [_worker(r) for r in rows]

    def live_workers(self, now: float) -> list[WorkerRecord]:
        query = select(workers).where(workers.c.state != "stopped", workers.c.alive_until >= now).order_by(workers.c.id)
        with self._read() as conn:
            return [_worker(r) for r in conn.execute(query).all()]

    def forget_workers(self, before: float) -> int:
        with self._write() as conn:
            return conn.execute(delete(workers).where(workers.c.last_seen < before)).rowcount


def _gpu_columns(gpu: GpuMemory | None) -> dict[str, Any]:
    return {
        "gpu_allocated": gpu.allocated if gpu else None,
        "gpu_reserved": gpu.reserved if gpu else None,
        "gpu_total": gpu.total if gpu else None,
    }


def _worker(row: Row[Any]) -> WorkerRecord:
    gpu = None
    if row.gpu_total is not None:
        gpu = GpuMemory(allocated=int(row.gpu_allocated or 0), reserved=int(row.gpu_reserved or 0),
                        total=int(row.gpu_total))
    return WorkerRecord(
        id=row.id,
        host=row.host,
        pid=row.pid,
        tools=tuple(json.loads(row.tools)),
        models=row.models,
        device=row.device,
        state=row.state,
        task_id=row.task_id,
        started_at=row.started_at,
        last_seen=row.last_seen,
        alive_until=row.alive_until,
        gpu=gpu,
    )
