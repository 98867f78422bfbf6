"""`fluxrun serve` stopped with tasks queued and running, and started again: every task ends, once.

One data directory, three starts of a real `fluxrun serve` (API + one worker, SQLite):
1. 16 tasks submitted; while the first one generates, serve gets SIGTERM (an orchestrator's
   stop): the running task finishes, the queued ones stay queued, serve exits 0;
2. started again: while the next long task generates, the whole process group gets SIGKILL
   (a power cut, the OOM killer): nothing finishes, nothing is handed back;
3. started again: the killed attempt's lease expires and its task runs again; every other
   queued task runs.
Then, as a user sees it: all 16 tasks ended well, each with its one downloadable file; the
task caught by SIGKILL says it lost its worker and ran twice, no other task ran twice; and
as an operator sees it: the SQLite file is intact, the project (and its key) is the first
start's.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.server import TERMINAL, Server

pytestmark = pytest.mark.slow

PIXEL_RUN = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"
LONG = {"prompt": "long", "steps": 16, "width": 256, "height": 256}  # running when the signal comes
QUICK = {"prompt": "quick", "steps": 2, "width": 64, "height": 64}
RUNNING = ("task_accept", "task_assign", "task_preprocess_start", "task_preprocess_end", "task_start",
           "task_output", "task_end")
SETTINGS = {"FLUXRUN_LEASE_SECONDS": "3"}  # a SIGKILLed attempt is re-queued 3 s after its last heartbeat


def _rows(data_dir: Path) -> dict[str, sqlite3.Row]:
    with sqlite3.connect(data_dir / "fluxrun.db") as conn:
        conn.row_factory = sqlite3.Row
        return {str(r["id"]): r for r in conn.execute("SELECT * FROM tasks ORDER BY id")}


def _generating(server: Server, taskid: str) -> None:
    deadline = time.monotonic() + 120
    while (task := server.detail(taskid))["status"] != "task_output":
        assert task["status"] not in TERMINAL, task
        assert time.monotonic() < deadline, server.log()[-6000:]
        time.sleep(0.05)


def test_serve_stopped_by_sigterm_then_by_sigkill_with_tasks_queued_and_running_ends_every_task_once(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = Server(data, **SETTINGS).start()
    try:
        bodies: list[dict[str, Any]] = [LONG, LONG] + [{**QUICK, "seed": str(n)} for n in range(14)]
        taskids = []
        for body in bodies:
            answer = first.post(PIXEL_RUN, body).json()
            assert answer["result"], answer
            taskids.append(answer["taskid"])
        _generating(first, taskids[0])
        assert first.process is not None
        first.process.send_signal(signal.SIGTERM)  # to serve alone, as an orchestrator does
        assert first.process.wait(timeout=120) == 0
    finally:
        first.stop()
    rows = _rows(data)
    assert rows[taskids[0]]["status"] == "task_postprocess_end" and rows[taskids[0]]["pexit"] == 0
    assert not [r for r in rows.values() if r["status"] in RUNNING]  # nothing left half-done
    queued = [t for t in taskids if rows[t]["status"] == "task_queue"]
    assert taskids[1] in queued  # the worker took nothing new once told to stop

    second = Server(data, **SETTINGS).start()
    try:
        _generating(second, taskids[1])
        assert second.process is not None
        os.killpg(second.process.pid, signal.SIGKILL)  # serve and its worker, at once
        second.process.wait(timeout=30)
    finally:
        second.stop()
    killed = _rows(data)[taskids[1]]
    assert killed["status"] in RUNNING and killed["lease_owner"]  # as the kill left it: leased to a dead worker

    third = Server(data, **SETTINGS).start()
    try:
        assert (third.key, third.secret) == (first.key, first.secret)
        ended = [third.wait_for(taskid, timeout=180) for taskid in taskids]
        for task in ended:
            assert task["status"] == "task_postprocess_end" and task["pexit"] == "0", task
            [output] = task["outputs"]
            download = httpx.get(output["url"], timeout=30)
            assert download.status_code == 200 and len(download.content) == int(output["size"])
        listed = third.post("/v1/Task/List", {"limit": 50}).json()
        assert listed["total"] == str(len(taskids))
    finally:
        third.stop()

    rows = _rows(data)
    lost = {t for t, r in rows.items() if "lost worker" in r["debugoutput"]}
    assert lost == {taskids[1]}
    assert rows[taskids[1]]["attempt"] == 2 and "attempt 1: lost worker" in rows[taskids[1]]["debugoutput"]
    assert all(r["attempt"] == 1 for t, r in rows.items() if t != taskids[1])
    assert all(r["lease_owner"] is None and r["handed_back"] == 0 for r in rows.values())
    with sqlite3.connect(data / "fluxrun.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT count(*) FROM projects").fetchone() == (1,)
        assert conn.execute("SELECT count(*), count(DISTINCT task_id) FROM outputs").fetchone() == (16, 16)
    assert json.loads((data / "credentials.json").read_text())["api_key"] == first.key
