"""Limits a real `fluxrun serve` enforces at the transport (API process only, no worker): a
body over the limit is refused before it is uploaded, and a WebSocket message far over the
limit is cut by the protocol."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from tests.integration.server import Server

PIXEL = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("limits") / "data", workers=0,
                     FLUXRUN_MAX_BODY_BYTES="4096", FLUXRUN_WS_MAX_MESSAGE_BYTES="1024")
    try:
        yield running.start()
    finally:
        running.stop()


def test_the_413_comes_before_the_body_is_sent(server: Server) -> None:
    head = (f"POST {PIXEL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: 104857600\r\n" + "".join(f"{k}: {v}\r\n" for k, v in server.headers().items()) + "\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())  # the headers of a 100 MB body, and not a byte of it
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}]}"):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {"result": False, "errors": [
        {"code": 0, "message": "body: must be at most 4096 bytes (got 104857600)"}]}


def test_curl_uploads_nothing_of_a_body_over_the_limit(server: Server, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"prompt": "x" * 20_000_000}))
    headers = [f"-H{k}: {v}" for k, v in server.headers().items()]
    done = subprocess.run(
        ["curl", "-sS", "--data-binary", f"@{big}", "-HContent-Type: application/json", "-HExpect: 100-continue",
         *headers, "-w", "\n%{http_code} %{size_upload}", server.base_url + PIXEL],
        capture_output=True, text=True, timeout=60, check=True)
    body, _, status = done.stdout.rpartition("\n")
    assert status == "413 0"  # curl waited for "100 Continue", got the answer instead
    assert json.loads(body)["errors"][0]["message"] == "body: must be at most 4096 bytes (got 20000014)"
    assert server.post("/v1/Task/List", {}).json()["total"] == "0"


def test_a_websocket_message_far_over_the_limit_is_cut_by_the_protocol(server: Server) -> None:
    url = server.base_url.replace("http", "ws", 1) + "/v1"
    with connect(url) as ws:
        ws.send("x" * 2000)  # over the limit: the handler says which limit
        assert json.loads(ws.recv(timeout=10))["message"] == "Messages must be at most 1024 bytes (got 2000)."
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with connect(url) as ws:
        started = time.monotonic()
        ws.send("x" * 1_000_000)  # far over: never buffered whole, the protocol closes
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert time.monotonic() - started < 10
