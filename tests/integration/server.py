"""A real `fluxrun serve` subprocess on a free loopback port, and the seeds' curl lines."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from fluxrun.auth import signature_headers

SEEDS = Path(__file__).resolve().parents[1] / "seeds"
PIXEL_SEED = SEEDS / "000_81c40bb3124a1d02.txt"
FLUX2_SEED = SEEDS / "004_5ddef0079da7076e.txt"
HOSTED = "https://api.wiro.ai"
TERMINAL = ("task_postprocess_end", "task_cancel")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, workers: int = 1, **settings: str) -> None:
        """``settings``: environment variables of the server process, FLUXRUN_* settings or
        others it reads (AWS_ACCESS_KEY_ID...); they win over the tests' own environment."""
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        # Only the settings a test names: none leak in from the environment running the tests.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
        # No drain delay at shutdown: no load balancer in front of a test server (tests of draining set one).
        self.env = {**inherited, "FLUXRUN_IDLE_POLL_SECONDS": "0.2", "FLUXRUN_REAPER_SECONDS": "0.5",
                    "FLUXRUN_DRAIN_SECONDS": "0", **settings}
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
        self.key = self.secret = ""
        self.last_seed_second = 0  # the seeds' nonce is $(date +%s): one seed call a second

    def start(self, timeout: float = 120) -> Server:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fluxrun", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--models", "tiny", "--workers", str(self.workers)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        credentials = self.data_dir / "credentials.json"
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited early:\n{self.log()}"
            if credentials.exists():
                try:
                    creds = json.loads(credentials.read_text())
                    self.key, self.secret = creds["api_key"], creds["api_secret"]
                    if self.post("/v1/Tool/List", {}).status_code == 200:
                        return self
                except (httpx.TransportError, ValueError, KeyError):
                    pass
            time.sleep(0.2)
        raise AssertionError(f"serve did not come up:\n{self.log()[-6000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert time.monotonic() < deadline, f"{text!r} never appeared in the log:\n{self.log()[-6000:]}"
            time.sleep(0.2)

    def headers(self) -> dict[str, str]:
        # Nanosecond nonces do not read as a unix time: unique, and never stale.
        return signature_headers(self.key, self.secret, nonce=str(time.time_ns()))

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.base_url + path, json=body, headers=self.headers(), timeout=30)

    def detail(self, taskid: str) -> dict[str, Any]:
        answer = self.post("/v1/Task/Detail", {"taskid": taskid}).json()
        assert answer["result"], answer
        return answer["tasklist"][0]

    def wait_for(self, taskid: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.detail(taskid)
            if task["status"] in statuses:
                return task
            time.sleep(0.1)
        raise AssertionError(f"task {taskid} never reached {statuses}: {task}\n{self.log()[-6000:]}")

    def worker_pids(self) -> list[int]:
        assert self.process
        children = psutil.Process(self.process.pid).children()
        return [c.pid for c in children if "worker" in " ".join(c.cmdline())]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def seed_bash_blocks(seed: Path) -> list[str]:
    """The ```bash blocks of a seed page, in order (the page is stored on one line)."""
    return [block.strip() for block in re.findall(r"```bash (.*?)```", seed.read_text(), flags=re.S)]


def prepare_block(seed: Path, key: str, secret: str) -> str:
    """The seed's "Integration Header Prepare" block with real values pasted in.

    The stored page lost its line breaks, which turns the block's leading comment into a
    comment over every line; its ``export`` statements are taken out one by one.
    """
    block = seed_bash_blocks(seed)[0]
    statements = ["export " + piece[: piece.rindex(";") + 1] for piece in block.split("export ")[1:]]
    script = "\n".join(statements)
    return script.replace("{{useSelectedProjectAPIKey}}", key).replace("XXXXXXXXX", secret)


class SeedCurl:
    """Runs a seed's curl lines byte for byte, but for the host and the pasted values."""

    def __init__(self, server: Server, seed: Path) -> None:
        self.server = server
        self.seed = seed
        self.blocks = seed_bash_blocks(seed)[1:]

    def line(self, starts_with: str, index: int = 0) -> str:
        matching = [b for b in self.blocks if b.startswith(f'curl -X POST "{HOSTED}{starts_with}')]
        return matching[index]

    def run(self, line: str, replacements: dict[str, str] | None = None) -> dict[str, Any]:
        # NONCE=$(date +%s) changes once a second and a nonce is single-use: one call a second.
        while int(time.time()) <= self.server.last_seed_second:
            time.sleep(0.05)
        self.server.last_seed_second = int(time.time())
        command = line.replace(HOSTED, self.server.base_url)
        for old, new in (replacements or {}).items():
            assert old in command, old
            command = command.replace(old, new)
        script = prepare_block(self.seed, self.server.key, self.server.secret) + "\n" + command
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
        # `date +%s` may have run in the next second already: the next call waits past this one too.
        self.server.last_seed_second = int(time.time())
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
