"""A callback outlives the process that was delivering it: `fluxrun serve` is killed between
two tries, started again on the same data directory, and the callback still arrives."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from tests.integration.receiver import Receiver
from tests.integration.server import Server

pytestmark = pytest.mark.slow

CALLBACK_SETTINGS = {
    "FLUXRUN_CALLBACK_ALLOW": "127.0.0.1",
    "FLUXRUN_CALLBACK_RETRY_BASE_SECONDS": "0.2",
    "FLUXRUN_CALLBACK_RETRY_MAX_SECONDS": "0.5",
    "FLUXRUN_CALLBACK_POLL_SECONDS": "0.2",
    "FLUXRUN_CALLBACK_TIMEOUT_SECONDS": "2",
    "FLUXRUN_CALLBACK_MAX_ATTEMPTS": "1000",
}


def test_a_callback_survives_a_restart_of_the_server(tmp_path: Path) -> None:
    receiver = Receiver(default=500)  # fails every try until the first server is gone
    data = tmp_path / "data"
    first = Server(data, **CALLBACK_SETTINGS).start()
    try:
        run = first.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX",
                         {"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
                          "callbackUrl": receiver.url()}).json()
        assert run["result"], run
        [failed_try] = receiver.wait_for(1)
        first.stop(signal.SIGKILL)  # no clean shutdown: whatever was in memory is lost
    finally:
        first.stop()
    tries_before = len(receiver.requests)
    receiver.default = 200

    second = Server(data, **CALLBACK_SETTINGS).start()
    try:
        delivered = receiver.wait_for(tries_before + 1)[-1]
        assert second.process and second.process.poll() is None
        # The retry comes from the new process, with the webhook-id of the first try.
        assert delivered.headers["webhook-id"] == failed_try.headers["webhook-id"]
        secret = json.loads((data / "credentials.json").read_text())["webhook_secret"]
        body = Webhook(secret).verify(delivered.body, delivered.headers)
        task = body["tasklist"][0]
        assert task["id"] == run["taskid"] and task["status"] == "task_postprocess_end" and task["pexit"] == "0"
        assert body == {"total": "1", "errors": [], "tasklist": [second.detail(run["taskid"])], "result": True}
    finally:
        second.stop()
        receiver.close()
    # SIGTERM stops the deliverer cleanly, with the worker.
    assert "callback deliverer stopped\n" in second.log() and "Traceback" not in second.log()
