"""Event latency across processes, and the CPU an idle listener costs, on SQLite and PostgreSQL.

For each database, one process writes progress the way a worker does (``record_progress``
on a leased task, a step every 40-80 ms) while two other processes watch the task side by
side, on the same writes:
- ``bus``: a subscription to the store's event bus (what the API process's WebSocket hub
  and an idle worker use);
- ``poll``: the baseline a user would otherwise write, reading the task row every 50 ms
  (the slowest poll that could meet a 50 ms target at all).
Latency is from just before the write call in the writer to the moment the watcher has
the change (so it includes the write's own transaction), on the system-wide monotonic
clock; "after commit" subtracts the write's own duration (what the bus adds to a write
that happens anyway). Idle CPU is each watcher's CPU time over a few seconds with nothing
happening.

    PYTHONPATH=. python bench/events_latency.py [--postgres postgresql://...] [--events 200]

PostgreSQL is measured when --postgres or FLUXRUN_TEST_DATABASE_URL names a server; the
run uses a schema of its own and drops it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import percentile, postgres_schema  # noqa: E402

from fluxrun.status import Status  # noqa: E402
from fluxrun.store import open_store  # noqa: E402

POLL_SECONDS = 0.05
IDLE_SECONDS = 3.0
TOOL = "desertPixel/Flat-Pixel-Art-FLUX"


# -- the watching processes ------------------------------------------------------------------
def watch(mode: str, url: str, project_id: int, task_id: int, total: int) -> None:
    store = open_store(url)
    latencies: list[tuple[int, float]] = []  # (step, seconds)
    if mode == "bus":
        subscription = store.events.subscribe()
        print("ready", flush=True)
        while len(latencies) < total:
            event = subscription.get()
            if event is not None and event.type == Status.OUTPUT.value:
                step = int(event.message["stepCurrent"])
                latencies.append((step, time.monotonic() - float(event.message["t0"])))
                if step == total:
                    break
    else:
        print("ready", flush=True)
        last = None
        while True:
            task = store.get_task(project_id, task_id=task_id)
            progress = task.progress if task else None
            if progress and progress["stepCurrent"] != last:
                last = progress["stepCurrent"]
                latencies.append((int(last), time.monotonic() - float(progress["t0"])))
                if int(last) == total:
                    break
            time.sleep(POLL_SECONDS)
    print(json.dumps(latencies), flush=True)


# -- the writer ------------------------------------------------------------------------------
def measure(url: str, events: int) -> dict[str, dict[str, float]]:
    store = open_store(url)
    store.migrate()
    project = store.create_project("bench", "apikey")
    task = store.create_task(project.id, TOOL, {"prompt": "p"}, Decimal("0"))
    lease = store.claim("bench", 3600, time.time())
    assert lease is not None
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    watchers = {
        mode: subprocess.Popen(
            [sys.executable, __file__, "--watch", mode, url, str(project.id), str(task.id), str(events)],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        for mode in ("bus", "poll")
    }
    try:
        for process in watchers.values():
            assert process.stdout and process.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        before = {mode: psutil.Process(p.pid).cpu_times() for mode, p in watchers.items()}
        time.sleep(IDLE_SECONDS)
        after = {mode: psutil.Process(p.pid).cpu_times() for mode, p in watchers.items()}
        idle = {
            mode: (after[mode].user - before[mode].user + after[mode].system - before[mode].system) / IDLE_SECONDS
            for mode in watchers
        }
        writes = []
        rng = random.Random(0)
        for step in range(1, events + 1):
            t0 = time.monotonic()
            store.record_progress(lease, {"stepCurrent": str(step), "stepTotal": str(events), "t0": repr(t0)},
                                  time.time())
            writes.append(time.monotonic() - t0)
            time.sleep(rng.uniform(0.04, 0.08))
        results = {}
        for mode, process in watchers.items():
            assert process.stdout
            seen = json.loads(process.stdout.readline())
            process.wait(timeout=30)
            latencies = [latency for _, latency in seen]
            after_commit = [latency - writes[step - 1] for step, latency in seen]
            results[mode] = {"p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
                             "commit_p50_ms": 1000 * percentile(after_commit, 50), "commit_p99_ms": 1000 * percentile(after_commit, 99),
                             "seen": len(latencies), "idle_cpu_pct": 100 * idle[mode]}
        results["write"] = {"p50_ms": 1000 * percentile(writes, 50), "p99_ms": 1000 * percentile(writes, 99)}
        return results
    finally:
        for process in watchers.values():
            if process.poll() is None:
                process.kill()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=os.environ.get("FLUXRUN_TEST_DATABASE_URL"))
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--watch", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watch:
        mode, url, project_id, task_id, total = args.watch
        watch(mode, url, int(project_id), int(task_id), int(total))
        return


    runs: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        runs["sqlite"] = measure(f"sqlite:///{folder}/bench.db", args.events)
    if args.postgres:
        with postgres_schema(args.postgres) as url:
            runs["postgres"] = measure(url, args.events)

    print(f"events_latency: {args.events} progress writes, 40-80 ms apart; poll baseline every "
          f"{1000 * POLL_SECONDS:.0f} ms; idle CPU over {IDLE_SECONDS:.0f} s; {os.cpu_count()} CPUs")
    print(f"{'':<18}{'from before the write':>22}{'after commit':>20}")
    print(f"{'database':<10}{'watcher':<8}{'p50 ms':>11}{'p99 ms':>11}{'p50 ms':>10}{'p99 ms':>10}{'seen':>6}"
          f"{'idle CPU %':>12}")
    for database, result in runs.items():
        for mode in ("bus", "poll"):
            r = result[mode]
            print(f"{database:<10}{mode:<8}{r['p50_ms']:>11.2f}{r['p99_ms']:>11.2f}{r['commit_p50_ms']:>10.2f}"
                  f"{r['commit_p99_ms']:>10.2f}{int(r['seen']):>6}{r['idle_cpu_pct']:>12.3f}")
        write = result["write"]
        print(f"{database:<10}{'(write)':<8}{write['p50_ms']:>11.2f}{write['p99_ms']:>11.2f}")
        bus, poll = result["bus"], result["poll"]
        print(f"{database:<10}ratios  poll/bus latency p50 {poll['p50_ms'] / bus['p50_ms']:.1f}x, "
              f"p99 {poll['p99_ms'] / bus['p99_ms']:.1f}x; bus p99 after commit "
              f"{'within' if bus['commit_p99_ms'] <= 50 else 'OVER'} the 50 ms target")


if __name__ == "__main__":
    main()
