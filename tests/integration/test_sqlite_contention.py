"""The SQLite file under contention: 4 processes claim and finish 2,000 tasks at once.

Each process (tests/integration/claimer.py) writes what a worker writes for each task (5 write
transactions: expire, claim, progress, heartbeat, finish): every task must be claimed exactly once (one attempt, one
end, its output recorded once) and no process may see an error, "database is locked" least
of all (WAL + busy_timeout + BEGIN IMMEDIATE, fluxrun/store/sqlite.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from fluxrun.status import Status
from fluxrun.store import open_store

pytestmark = pytest.mark.slow

TASKS = 2000
PROCESSES = 4
ROOT = Path(__file__).resolve().parents[2]
TOOL = "desertPixel/Flat-Pixel-Art-FLUX"


def test_four_processes_claim_and_finish_2000_tasks_each_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fluxrun.db'}"
    store = open_store(url)
    store.migrate()
    projects = [store.create_project(f"p{n}", "apikey") for n in range(3)]  # fair share moves between them
    expected = [store.create_task(projects[n % 3].id, TOOL, {"prompt": f"t{n}"}, Decimal("0.0001")).id
                for n in range(TASKS)]
    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    running = [subprocess.Popen([sys.executable, "-m", "tests.integration.claimer", url, f"claimer{n}", str(go)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for n in range(PROCESSES)]
    go.touch()
    results, stderrs = [], []
    for process in running:
        out, err = process.communicate(timeout=240)
        stderrs.append(err)
        assert process.returncode == 0, err[-4000:]
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert not any("database is locked" in err for err in stderrs), next(e for e in stderrs if "locked" in e)[-4000:]
    assert [r["errors"] for r in results] == [0] * PROCESSES, "\n".join(stderrs)[-4000:]
    claims = Counter(task_id for r in results for task_id in r["claimed"])
    assert sorted(claims) == sorted(expected) and set(claims.values()) == {1}  # each once, none missed
    assert all(r["claimed"] for r in results), [len(r["claimed"]) for r in results]  # every process took part

    for project in projects:
        total, tasks = store.list_tasks(project.id, start=0, limit=TASKS)
        assert total == len(tasks)
        for task in tasks:
            assert (task.status, task.pexit, task.attempt, task.lease_owner) == (Status.POSTPROCESS_END, 0, 1, None)
            assert [(o.name, o.size) for o in task.outputs] == [("0.png", task.id)]
            assert "lost worker" not in task.debugoutput
    store.close()
    print(f"\n{TASKS} tasks over {PROCESSES} processes: " + ", ".join(str(len(r["claimed"])) for r in results))
