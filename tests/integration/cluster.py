"""fluxrun scaled out on one machine: `fluxrun api` and `fluxrun worker` subprocesses that
share one database (and a bucket), as they would on many hosts.

Each process is started the way deploy/ starts it (`python -m fluxrun api|worker`, settings
in FLUXRUN_* variables) and can be killed and started again, as a supervisor would.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from fluxrun.auth import signature_headers


def fluxrun_env(**settings: str) -> dict[str, str]:
    """The environment of a fluxrun process: this one's, less any FLUXRUN_* setting of the
    machine running the tests, plus ``settings``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    return {**inherited, **settings}


def fluxrun_cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """One `fluxrun` command run to its end; its standard output."""
    done = subprocess.run([sys.executable, "-m", "fluxrun", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"fluxrun {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


def create_keys(env: dict[str, str], name: str = "cluster") -> tuple[str, str]:
    """A signature-mode project made with `fluxrun keys create --json`: (key, secret)."""
    created = json.loads(fluxrun_cli(env, "keys", "create", "--name", name, "--json"))
    return created["api_key"], created["api_secret"]


class Managed:
    """One long-running fluxrun process with its log file; started again after a kill."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Managed:
        log = self.log_path.open("ab")
        log.write(f"--- start {self.starts + 1} ---\n".encode())
        log.flush()
        self.process = subprocess.Popen([sys.executable, "-m", "fluxrun", *self.args], env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process (and anything it started) and wait for its end."""
        if not self.alive:
            return
        assert self.process is not None
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class ApiProcess(Managed):
    def __init__(self, name: str, port: int, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(name, ["api", "--port", str(port)], env, log_dir)
        self.base_url = f"http://127.0.0.1:{port}"

    def wait_ready(self, client: SignedClient, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive, f"{self.name} exited early:\n{self.log()[-6000:]}"
            try:
                if client.post(self.base_url, "/v1/Tool/List", {}).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} did not come up:\n{self.log()[-6000:]}")


class WorkerProcess(Managed):
    READY = " ready ("  # "worker host/pid ready (tiny models on cpu)"

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(name, ["worker"], env, log_dir)

    @property
    def worker_id_suffix(self) -> str:
        """The end of this process's worker id (``host/pid``), as the store records lease owners."""
        return f"/{self.pid}"

    @property
    def ready(self) -> bool:
        """Alive, and said it was ready since its last start."""
        text = self.log()
        return self.alive and self.READY in text[text.rfind(f"--- start {self.starts} ---"):]

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive, f"{self.name} exited early:\n{self.log()[-6000:]}"
            if self.ready:
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.name} never said it was ready:\n{self.log()[-6000:]}")


class SignedClient:
    """Signed requests (signature mode) to any of the API processes; one nonce per request."""

    def __init__(self, key: str, secret: str) -> None:
        self.key = key
        self.secret = secret
        self.http = httpx.Client(timeout=30)

    def post(self, base_url: str, path: str, body: dict[str, Any]) -> httpx.Response:
        # Random nonces: unique across threads, and never stale.
        headers = signature_headers(self.key, self.secret, nonce=secrets.token_hex(16))
        return self.http.post(base_url + path, json=body, headers=headers)

    def detail(self, base_url: str, taskid: str) -> dict[str, Any]:
        answer = self.post(base_url, "/v1/Task/Detail", {"taskid": taskid}).json()
        assert answer["result"], answer
        return answer["tasklist"][0]

    def close(self) -> None:
        self.http.close()
