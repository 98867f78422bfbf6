"""API throughput and latency: Run and Task/Detail against one and two `fluxrun api`
processes, on SQLite and on PostgreSQL, side by side in one run.

For each database x number of API processes: a fresh database (`fluxrun db upgrade`, a
project from `fluxrun keys create`), N `fluxrun api` processes on it (no worker: tasks just
queue), then a closed-loop load from other processes (a pool of client processes, each one
httpx client sending signed requests one after the other, spread round-robin over the API
processes): after 2 s of unmeasured warm-up, `Run` (a 64x64 pixel-art task) for --seconds,
then `Task/Detail` of the tasks just made for --seconds. Throughput is completed requests
per second over the window; latency is each request's round trip as the client sees it
(signing included); the API processes' CPU time over the window is read with psutil.
Each configuration is measured --rounds times, in alternating order, and keeps its best.

    PYTHONPATH=. python bench/api_throughput.py [--postgres postgresql://...] [--clients 4] [--seconds 6] [--rounds 3]

PostgreSQL is measured when --postgres or FLUXRUN_TEST_DATABASE_URL names a server; each
configuration uses a schema of its own and drops it. The load generator shares the machine
with the API processes: on a small machine the ratio of 2 APIs to 1 is bounded by the CPUs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import percentile, postgres_schema  # noqa: E402

RUN_PATH = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"
RUN_BODY = {"prompt": "bench", "steps": 2, "width": 64, "height": 64}
DETAIL_PATH = "/v1/Task/Detail"
WARMUP_SECONDS = 2.0


# -- the load generator (in its own processes) -----------------------------------------------
def load(urls: list[str], key: str, secret: str, kind: str, start_at: float, seconds: float,
         taskids: list[str], seed: int) -> dict[str, list]:
    """One client: requests one after the other from ``start_at`` for ``seconds``.
    Returns the latencies of the answered requests, the task ids Run made and the errors."""
    import httpx

    from fluxrun.auth import signature_headers

    rng = random.Random(seed)
    latencies: list[float] = []
    made: list[str] = []
    errors: list[str] = []
    turn = seed
    with httpx.Client(timeout=30) as client:
        time.sleep(max(0.0, start_at - time.time()))
        cpu_at_start = time.process_time()
        end = start_at + seconds
        while time.time() < end:
            url = urls[turn % len(urls)]
            turn += 1
            path, body = (RUN_PATH, RUN_BODY) if kind == "run" else (DETAIL_PATH, {"taskid": rng.choice(taskids)})
            began = time.perf_counter()
            try:
                headers = signature_headers(key, secret, nonce=secrets.token_hex(16))
                answer = client.post(url + path, json=body, headers=headers)
                data = answer.json()
            except Exception as exc:  # counted, not fatal: the table shows them
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - began
            if answer.status_code != 200 or data.get("result") is not True:
                errors.append(f"{answer.status_code}: {json.dumps(data)[:200]}")
                continue
            latencies.append(elapsed)
            if kind == "run":
                made.append(data["taskid"])
        cpu = time.process_time() - cpu_at_start
    return {"latencies": latencies, "made": made, "errors": errors, "cpu": cpu}


# -- one configuration -------------------------------------------------------------------------
@dataclass
class Phase:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    api_cpu: float  # CPU seconds of the API processes over the window
    client_cpu: float  # CPU seconds of the load generator

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def api_cores(self) -> float:
        return self.api_cpu / self.seconds

    @property
    def client_cores(self) -> float:
        return self.client_cpu / self.seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(processes: list[subprocess.Popen[bytes]]) -> float:
    import psutil

    total = 0.0
    for process in processes:
        times = psutil.Process(process.pid).cpu_times()
        total += times.user + times.system
    return total


def _fluxrun(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fluxrun", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"fluxrun {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def _wait_ready(url: str, key: str, secret: str, process: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    from fluxrun.auth import signature_headers

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"fluxrun api exited:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            headers = signature_headers(key, secret, nonce=secrets.token_hex(16))
            if httpx.post(url + "/v1/Tool/List", json={}, headers=headers, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"fluxrun api did not come up:\n{log.read_text(errors='replace')[-4000:]}")


def measure(database_url: str, apis: int, clients: int, seconds: float, folder: Path) -> dict[str, Phase]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    env = {**inherited, "PYTHONPATH": str(ROOT), "FLUXRUN_DATABASE_URL": database_url,
           # No worker runs: every task stays queued; neither the queue limit nor the
           # project's concurrency limit may refuse the benchmark's tasks, nor the per-key
           # rate its one key's hundreds of requests a second.
           "FLUXRUN_QUEUE_LIMIT": "0", "FLUXRUN_PROJECT_CONCURRENCY": "0", "FLUXRUN_RATE_LIMIT_PER_SECOND": "0"}
    admin = {**env, "FLUXRUN_DATA_DIR": str(folder / "admin")}
    _fluxrun(admin, "db", "upgrade")
    created = json.loads(_fluxrun(admin, "keys", "create", "--name", "bench", "--json"))
    key, secret = created["api_key"], created["api_secret"]
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for n in range(apis):
            port = _free_port()
            log = folder / f"api{n}.log"
            with log.open("ab") as handle:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "fluxrun", "api", "--port", str(port)],
                    env={**env, "FLUXRUN_DATA_DIR": str(folder / f"api{n}")}, stdout=handle, stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
            _wait_ready(urls[-1], key, secret, processes[-1], log)

        results: dict[str, Phase] = {}
        taskids: list[str] = []
        with multiprocessing.get_context("spawn").Pool(clients) as pool:
            # Unmeasured: the first requests of a fresh process pay for lazy imports and caches.
            warm = [(urls, key, secret, "run", time.time() + 1.0, WARMUP_SECONDS, [], n) for n in range(clients)]
            pool.starmap(load, warm)
            for kind in ("run", "detail"):
                start_at = time.time() + 1.0  # every client process is up and waiting by then
                jobs = [(urls, key, secret, kind, start_at, seconds, taskids, n) for n in range(clients)]
                pending = pool.starmap_async(load, jobs)
                time.sleep(max(0.0, start_at - time.time()))
                api_cpu = -_cpu_seconds(processes)
                time.sleep(seconds)
                api_cpu += _cpu_seconds(processes)
                outcomes = pending.get(timeout=seconds + 120)
                latencies = [latency for outcome in outcomes for latency in outcome["latencies"]]
                errors = [error for outcome in outcomes for error in outcome["errors"]]
                if errors:
                    print(f"  {kind}: {len(errors)} errors, e.g. {errors[0]}", file=sys.stderr)
                if not latencies:
                    raise SystemExit(f"no {kind} request succeeded")
                client_cpu = sum(outcome["cpu"] for outcome in outcomes)
                results[kind] = Phase(len(latencies), seconds, 1000 * percentile(latencies, 50), 1000 * percentile(latencies, 99), len(errors),
                                      api_cpu, client_cpu)
                if kind == "run":
                    taskids = [taskid for outcome in outcomes for taskid in outcome["made"]]
        return results
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def run_config(database: str, apis: int, args: argparse.Namespace) -> dict[str, Phase]:

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        if database == "sqlite":
            return measure(f"sqlite:///{folder / 'bench.db'}", apis, args.clients, args.seconds, folder)
        with postgres_schema(args.postgres) as url:
            return measure(url, apis, args.clients, args.seconds, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=os.environ.get("FLUXRUN_TEST_DATABASE_URL"))
    parser.add_argument("--clients", type=int, default=4, help="client processes, one request in flight each")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each Run and Detail window")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over every configuration (alternating order); the table keeps each one's best")
    args = parser.parse_args()

    databases = ["sqlite"] + (["postgres"] if args.postgres else [])
    configs = [(database, apis) for database in databases for apis in (1, 2)]
    rounds: dict[tuple[str, int], list[dict[str, Phase]]] = {config: [] for config in configs}
    for round_ in range(args.rounds):
        # Alternate the order, so a slow stretch of the shared machine does not always hit the same one.
        for database, apis in configs if round_ % 2 == 0 else reversed(configs):
            print(f"round {round_ + 1}: {database} with {apis} API process(es)...", file=sys.stderr, flush=True)
            rounds[(database, apis)].append(run_config(database, apis, args))
    # On a shared machine the best round is the one least disturbed by others.
    runs = {config: {kind: max((r[kind] for r in results), key=lambda phase: phase.rate)
                     for kind in ("run", "detail")} for config, results in rounds.items()}

    load = os.getloadavg()
    print(f"api_throughput: {args.clients} client processes (one request in flight each), {args.seconds:.0f} s "
          f"per window, best of {args.rounds} round(s); {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{'':<15}{'Run':^42}{'Task/Detail':^42}")
    header = f"{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'API cpu':>9}{'ms/req':>9}"
    print(f"{'database':<10}{'APIs':>5}{header}{header}{'errors':>8}")
    for (database, apis), phases in runs.items():
        cells = "".join(f"{p.rate:>8.0f}{p.p50_ms:>8.1f}{p.p99_ms:>8.1f}{p.api_cores:>9.2f}"
                        f"{1000 * p.api_cpu / p.requests:>9.1f}" for p in (phases["run"], phases["detail"]))
        print(f"{database:<10}{apis:>5}{cells}{phases['run'].errors + phases['detail'].errors:>8}")
    client = [p.client_cores for phases in runs.values() for p in phases.values()]
    print(f"API cpu: CPU cores busy in the API processes (together) during the window; ms/req: API CPU time per "
          f"request. The load generator used {min(client):.2f}-{max(client):.2f} cores.")

    def ratio(a: Phase, b: Phase) -> str:
        return f"{a.rate / b.rate:.2f}x req/s, p50 {a.p50_ms / b.p50_ms:.2f}x"

    print("ratios")
    for database in databases:
        one, two = runs[(database, 1)], runs[(database, 2)]
        print(f"  2 APIs / 1, {database:<8}     Run {ratio(two['run'], one['run'])};  "
              f"Detail {ratio(two['detail'], one['detail'])}")
    if "postgres" in databases:
        for apis in (1, 2):
            pg, lite = runs[("postgres", apis)], runs[("sqlite", apis)]
            print(f"  PostgreSQL / SQLite, {apis} API{'s' if apis > 1 else ' '}  Run {ratio(pg['run'], lite['run'])};  "
                  f"Detail {ratio(pg['detail'], lite['detail'])}")


if __name__ == "__main__":
    main()
