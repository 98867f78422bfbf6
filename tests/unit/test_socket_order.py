"""What a WebSocket client is sent of a task: each change once, never older after newer."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal

from fluxrun.api.events_hub import Connection, Watch
from fluxrun.status import Status
from fluxrun.storage.local import LocalStorage
from fluxrun.store.base import OutputRecord, TaskRecord

TASK = TaskRecord(
    id=5, uuid="0b6f5c1e-0000-4000-8000-000000000000", token="t" * 30, project_id=1, tool="a/b", parameters={},
    callback_url="", status=Status.QUEUE, attempt=0, lease_owner=None, lease_expires_at=None, debugoutput="",
    debugerror="", pexit=None, progress=None, output_key="a" * 40, cps=Decimal("0.1"), elapsed=None, createtime=1.0,
    accepttime=None, assigntime=None, preprocessstarttime=None, preprocessendtime=None, starttime=None,
    endtime=None, postprocessstarttime=None, postprocessendtime=None, canceltime=None, kill_requested=False,
)


def _watch(tmp_path, previews: bool = False) -> Watch:
    return Watch(Connection("http://h"), TASK, previews, LocalStorage(tmp_path))


def _sent(watch: Watch) -> list[tuple[str, object]]:
    queue: asyncio.Queue = watch.connection.queue
    out = []
    while not queue.empty():
        message = queue.get_nowait()
        assert message["id"] == "5" and message["tasktoken"] == TASK.token and message["result"] is True
        out.append((message["type"], message["message"]))
    return out


def _progress(step: int) -> dict[str, str]:
    return {"type": "progressGenerate", "stepCurrent": str(step), "stepTotal": "3"}


def test_a_snapshot_and_the_events_around_it_are_sent_once_in_order(tmp_path) -> None:
    watch = _watch(tmp_path)
    watch.offer("task_accept", 1, None)  # heard between subscribing and reading
    watch.offer_snapshot(replace(TASK, status=Status.OUTPUT, attempt=1, progress=_progress(2)))
    watch.offer("task_start", 1, None)  # older than the snapshot: already passed
    watch.offer("task_output", 1, _progress(2))  # the same as the snapshot
    watch.offer("task_output", 1, _progress(3))
    watch.offer("task_end", 1, None)
    assert _sent(watch) == [
        ("task_accept", None), ("task_output", _progress(2)), ("task_output", _progress(3)), ("task_end", None),
    ]


def test_a_requeued_task_starts_over_and_nothing_follows_the_end(tmp_path) -> None:
    watch = _watch(tmp_path)
    for kind, attempt in [("task_queue", 0), ("task_accept", 1), ("task_start", 1), ("task_queue", 1),
                          ("task_accept", 2), ("task_start", 2), ("task_queue", 0)]:
        watch.offer(kind, attempt, None)
    watch.offer("task_error", 2, "RuntimeError: boom")
    watch.offer("task_postprocess_end", 2, None, None)
    watch.offer("task_output", 2, _progress(1))
    watch.offer("task_cancel", 2, None)
    assert [kind for kind, _ in _sent(watch)] == [
        "task_queue", "task_accept", "task_start", "task_queue", "task_accept", "task_start", "task_error",
        "task_postprocess_end",
    ]


def test_a_late_client_gets_the_end_with_its_outputs_and_a_failure_its_reason(tmp_path) -> None:
    output = OutputRecord("o1", 5, "0.png", "image/png", 1234, "k" * 30, 2.0)
    done = replace(TASK, status=Status.POSTPROCESS_END, attempt=1, pexit=0, outputs=(output,))
    watch = _watch(tmp_path)
    watch.offer_snapshot(done)
    watch.offer("task_postprocess_end", 1, None, done)
    assert _sent(watch) == [("task_postprocess_end", [
        {"name": "0.png", "contenttype": "image/png", "size": "1234", "url": f"http://h/files/{'a' * 40}/0.png"},
    ])]
    failed = replace(TASK, status=Status.POSTPROCESS_END, attempt=1, pexit=1, debugerror="ValueError: x")
    watch = _watch(tmp_path)
    watch.offer_snapshot(failed)
    assert _sent(watch) == [("task_error", "ValueError: x"), ("task_postprocess_end", [])]


def test_previews_only_for_clients_that_asked(tmp_path) -> None:
    asked, silent = _watch(tmp_path, previews=True), _watch(tmp_path)
    for watch in (asked, silent):
        watch.offer("task_preview", 1, "/9j/4AAQ")
    assert _sent(asked) == [("task_preview", "/9j/4AAQ")] and _sent(silent) == []
