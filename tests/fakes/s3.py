"""An S3-compatible server on loopback: moto's server mode in its own process.

Not moto's in-process mock: boto3 talks real HTTP to it, and presigned or public URLs
can be downloaded from it with any HTTP client, as from AWS S3 or MinIO.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "fluxrun-test-key",
    "AWS_SECRET_ACCESS_KEY": "fluxrun-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoS3:
    """``auth_after=N``: the first N AWS requests go unchecked (to set buckets and IAM users
    up), every later one must be signed by a known IAM user and is allowed by its policies."""

    def __init__(self, log_path: Path, auth_after: int | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.auth_after = auth_after
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> MotoS3:
        log = self.log_path.open("ab")
        env = dict(os.environ)
        if self.auth_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.auth_after)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text(errors="replace")
            try:
                httpx.get(self.url + "/moto-api/", timeout=2)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"moto_server did not come up:\n{self.log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of the tests' own, to look into the buckets behind fluxrun's back."""
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def new_bucket(self) -> str:
        name = f"fluxrun-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name
