"""The event bus, on SQLite and PostgreSQL: every committed change of a task is published,
reaches other processes, and a listener waiting for it costs no CPU."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest

from fluxrun.errors import LeaseLost
from fluxrun.status import Status
from fluxrun.store.base import NewOutput, TaskStore
from fluxrun.store.events import TASK_ERROR, TASK_PREVIEW, EventTooLarge, Subscription, TaskEvent
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

TOOL = "desertPixel/Flat-Pixel-Art-FLUX"
WAIT = 10.0  # seconds to wait for an event before calling it lost
ROOT = Path(__file__).resolve().parents[2]


def _events(subscription: Subscription, count: int) -> list[tuple[str, int, Any]]:
    got = []
    for _ in range(count):
        event = subscription.get(timeout=WAIT)
        assert event is not None, f"only {got} arrived"
        got.append((event.type, event.attempt, event.message))
    return got


def _nothing_more(subscription: Subscription) -> None:
    assert subscription.get(timeout=0.3) is None


@pytest.fixture
def project(store: TaskStore):
    return store.create_project("events", "apikey")


@pytest.fixture
def heard(store: TaskStore):
    subscription = store.events.subscribe()
    yield subscription
    subscription.close()


def _task(store: TaskStore, project_id: int):
    return store.create_task(project_id, TOOL, {"prompt": "p"}, Decimal("0.1"))


def test_every_step_of_a_successful_task_is_published(store: TaskStore, project, heard: Subscription) -> None:
    task = _task(store, project.id)
    lease = store.claim("w", 30, time.time())
    for status in (Status.ASSIGN, Status.PREPROCESS_START, Status.PREPROCESS_END, Status.START):
        store.advance(lease, status, time.time())
    store.record_progress(lease, {"stepCurrent": "1", "stepTotal": "2"}, time.time())
    store.record_progress(lease, {"stepCurrent": "2", "stepTotal": "2"}, time.time())
    store.advance(lease, Status.END, time.time())
    store.finish_success(lease, [NewOutput("0.png", "image/png", 5)], 1.0, time.time())
    assert _events(heard, 10) == [
        ("task_queue", 0, None),
        ("task_accept", 1, None),
        ("task_assign", 1, None),
        ("task_preprocess_start", 1, None),
        ("task_preprocess_end", 1, None),
        ("task_start", 1, None),
        ("task_output", 1, {"stepCurrent": "1", "stepTotal": "2"}),
        ("task_output", 1, {"stepCurrent": "2", "stepTotal": "2"}),
        ("task_end", 1, None),
        ("task_postprocess_end", 1, None),
    ]
    _nothing_more(heard)
    assert task.id == lease.task_id


def test_failures_cancels_kills_and_lost_leases_are_published(store: TaskStore, project, heard: Subscription) -> None:
    failed = _task(store, project.id)
    lease = store.claim("w", 30, time.time())
    store.finish_failure(lease, "RuntimeError: out of memory", time.time())
    cancelled = _task(store, project.id)
    store.cancel_queued(project.id, cancelled.id, time.time())
    killed = _task(store, project.id)
    store.claim("w", 30, time.time())
    store.kill(project.id, killed.id, time.time())
    assert [(e.task_id, e.type, e.message) for e in _raw(heard, 9)] == [
        (failed.id, "task_queue", None),
        (failed.id, "task_accept", None),
        (failed.id, TASK_ERROR, "RuntimeError: out of memory"),
        (failed.id, "task_postprocess_end", None),
        (cancelled.id, "task_queue", None),
        (cancelled.id, "task_cancel", None),
        (killed.id, "task_queue", None),
        (killed.id, "task_accept", None),
        (killed.id, "task_cancel", None),
    ]

    # A worker that stopped answering: queued again, then failed after the last attempt.
    lost = _task(store, project.id)
    store.claim("gone", 0.01, time.time())
    time.sleep(0.05)
    store.expire_leases(time.time(), max_attempts=2)
    store.claim("gone", 0.01, time.time())
    time.sleep(0.05)
    store.expire_leases(time.time(), max_attempts=2)
    events = _raw(heard, 6)
    assert [(e.type, e.attempt) for e in events] == [
        ("task_queue", 0), ("task_accept", 1), ("task_queue", 1), ("task_accept", 2), (TASK_ERROR, 2),
        ("task_postprocess_end", 2),
    ]
    assert {e.task_id for e in events} == {lost.id}
    assert "stopped responding" in events[4].message
    _nothing_more(heard)


def _raw(subscription: Subscription, count: int) -> list[TaskEvent]:
    got = []
    for _ in range(count):
        event = subscription.get(timeout=WAIT)
        assert event is not None, f"only {got} arrived"
        got.append(event)
    return got


def test_a_write_that_is_refused_publishes_nothing(store: TaskStore, project, heard: Subscription) -> None:
    task = _task(store, project.id)
    lease = store.claim("w", 30, time.time())
    store.kill(project.id, task.id, time.time())
    assert [e[0] for e in _events(heard, 3)] == ["task_queue", "task_accept", "task_cancel"]
    with pytest.raises(LeaseLost):
        store.record_progress(lease, {"stepCurrent": "1"}, time.time())
    with pytest.raises(LeaseLost):
        store.finish_failure(lease, "late", time.time())
    _nothing_more(heard)


def test_published_events_reach_every_subscriber_and_oversized_ones_are_refused(store: TaskStore) -> None:
    first, second = store.events.subscribe(), store.events.subscribe()
    try:
        store.events.publish(TaskEvent(7, TASK_PREVIEW, 1, "x" * 5000))
        for subscription in (first, second):
            event = subscription.get(timeout=WAIT)
            assert event == TaskEvent(7, TASK_PREVIEW, 1, "x" * 5000)
        with pytest.raises(EventTooLarge):
            store.events.publish(TaskEvent(7, TASK_PREVIEW, 1, "x" * 9000))
    finally:
        first.close()
        second.close()
    assert first.get(timeout=0) is None


LISTENER = """
import json, sys
from fluxrun.store import open_store
store = open_store(sys.argv[1])
subscription = store.events.subscribe()
print("ready", flush=True)
while True:
    event = subscription.get()
    print(json.dumps([event.task_id, event.type, event.message]), flush=True)
"""


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout
        for line in process.stdout:
            lines.put(line.strip())

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_another_process_hears_each_change_and_idles_without_cpu(
    store: TaskStore, project, database_url: str
) -> None:
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, database_url], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        lines = _lines(listener)
        assert lines.get(timeout=60) == "ready"
        # Idle: it waits on a socket, so two seconds of waiting cost next to no CPU time.
        watched = psutil.Process(listener.pid)
        before = watched.cpu_times()
        time.sleep(2.0)
        after = watched.cpu_times()
        idle_cpu = (after.user - before.user) + (after.system - before.system)
        assert idle_cpu < 0.05, f"an idle listener used {idle_cpu:.3f} s of CPU in 2 s"

        task = _task(store, project.id)
        lease = store.claim("w", 30, time.time())
        store.record_progress(lease, {"stepCurrent": "1", "stepTotal": "3"}, time.time())
        heard = [json.loads(lines.get(timeout=WAIT)) for _ in range(3)]
        assert heard == [
            [task.id, "task_queue", None],
            [task.id, "task_accept", None],
            [task.id, "task_output", {"stepCurrent": "1", "stepTotal": "3"}],
        ]
    finally:
        listener.kill()
        listener.wait()


def test_a_listener_killed_without_cleaning_up_is_forgotten(store: TaskStore, database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL forgets a dead session's LISTEN itself")
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, database_url], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = _lines(listener)
    assert lines.get(timeout=60) == "ready"
    folder = Path(database_url.removeprefix("sqlite:///")).parent / "events"
    sockets = {p.name for p in folder.glob(f"{listener.pid}-*.sock")}
    assert len(sockets) == 1
    listener.send_signal(signal.SIGKILL)
    listener.wait()
    assert {p.name for p in folder.glob(f"{listener.pid}-*.sock")} == sockets  # left behind
    store.events.publish(TaskEvent(1, TASK_PREVIEW, 1, "x"))
    assert not list(folder.glob(f"{listener.pid}-*.sock"))


def test_a_listener_whose_connection_drops_reconnects_and_says_so(store: TaskStore, database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("only PostgreSQL listeners hold a connection")
    from sqlalchemy import create_engine, text

    from fluxrun.store.events import RESYNC

    subscription = store.events.subscribe()
    try:
        backend_pid = subscription._conn.info.backend_pid  # type: ignore[attr-defined]
        engine = create_engine(database_url)
        with engine.begin() as conn:  # what a database restart or a network cut does to it
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend_pid})
        engine.dispose()
        event = subscription.get(timeout=WAIT)
        assert event is not None and event.type == RESYNC  # events may have been missed: look again
        store.events.publish(TaskEvent(3, TASK_PREVIEW, 1, "after"))
        assert subscription.get(timeout=WAIT) == TaskEvent(3, TASK_PREVIEW, 1, "after")
    finally:
        subscription.close()
