""""Waiting for a worker": what Task/Detail and Task/List add to a queued task's debugoutput
when no live worker takes tasks of its tool.

Such a task is not failed: it runs as soon as a worker that serves its tool is up. The line
is computed when the answer is rendered (one read of the worker registry per answer, only
when the answer has a queued task) and never written into the task.
"""

from __future__ import annotations

import time
from typing import Any

from fluxrun.status import Status
from fluxrun.store.base import TaskRecord, TaskStore, WorkerRecord


def waiting_line(tool: str, live: list[WorkerRecord], now: float) -> str | None:
    """Why a queued task of ``tool`` waits, or None when a worker takes its tasks."""
    serving = [w for w in live if tool in w.tools]
    if any(w.takes_tasks(now) for w in serving):
        return None
    loading = sum(1 for w in serving if w.state == "loading")
    if loading:
        reason = f"{_workers(loading)} serving it {'is' if loading == 1 else 'are'} still loading models"
    elif not live:
        reason = "none is running"
    else:
        reason = f"{_workers(len(live))} {'is' if len(live) == 1 else 'are'} running, serving other tools or stopping"
    return f"waiting for a worker that serves {tool} ({reason})"


def add_waiting_lines(wires: list[dict[str, Any]], tasks: list[TaskRecord], store: TaskStore) -> None:
    """Append the waiting line to the debugoutput of each queued task in ``wires`` (the
    task_wire of each of ``tasks``, in the same order) that no live worker would take."""
    if not any(task.status is Status.QUEUE for task in tasks):
        return
    now = time.time()
    live = store.live_workers(now)
    for wire, task in zip(wires, tasks):
        if task.status is Status.QUEUE and (line := waiting_line(task.tool, live, now)):
            text = wire["debugoutput"]
            if text and not text.endswith("\n"):
                text += "\n"
            wire["debugoutput"] = f"{text}{line}\n"


def _workers(count: int) -> str:
    return f"{count} worker{'' if count == 1 else 's'}"
