"""One process of the SQLite contention test: claims and finishes tasks until the queue is empty.

    python -m tests.integration.claimer DATABASE_URL NAME GO_FILE

It opens its own store, waits until GO_FILE exists (so every process starts at once), then
writes what a worker's claim loop writes for each task, less the status steps (the same kind
of fenced write as the progress): expire leases, claim, record progress, renew the lease,
finish with one output. Each store
call that raises is counted and logged to stderr (a "database is locked" would land there),
and the loop goes on. At the end it prints one JSON line: the tasks it claimed and its errors.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from fluxrun.store import open_store
from fluxrun.store.base import NewOutput

log = logging.getLogger("claimer")


def main(url: str, name: str, go_file: Path) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    store = open_store(url)
    claimed: list[int] = []
    errors = 0
    empty_in_a_row = 0
    while not go_file.exists():
        time.sleep(0.01)
    try:
        while empty_in_a_row < 3:  # the queue is empty (a claim that failed is not "empty")
            try:
                store.expire_leases(time.time(), max_attempts=3)
                lease = store.claim(name, 60, time.time())
                if lease is None:
                    empty_in_a_row += 1
                    continue
                empty_in_a_row = 0
                claimed.append(lease.task_id)
                store.record_progress(lease, {"step": 1, "total": 1}, time.time())
                lease = store.heartbeat(lease, 60, time.time())
                store.finish_success(lease, [NewOutput("0.png", "image/png", lease.task_id)], 0.01, time.time())
            except Exception:
                errors += 1
                log.exception("%s: a store call failed", name)
    finally:
        store.close()
    print(json.dumps({"name": name, "claimed": claimed, "errors": errors}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
