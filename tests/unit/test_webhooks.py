"""Callback signatures (Standard Webhooks) and the retry schedule."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from fluxrun.store.deliveries import new_webhook_secret
from fluxrun.worker.callbacks import retry_delay
from fluxrun.worker.webhooks import signature_headers

BODY = '{"total":"1","errors":[],"tasklist":[{"id":"7","status":"task_postprocess_end"}],"result":true}'


def test_the_reference_library_verifies_our_signature() -> None:
    secret = new_webhook_secret()
    now = int(time.time())
    headers = signature_headers(secret, "msg_abc", now, BODY)
    assert headers["webhook-id"] == "msg_abc" and headers["webhook-timestamp"] == str(now)
    assert Webhook(secret).verify(BODY, headers) == {"total": "1", "errors": [],
                                                     "tasklist": [{"id": "7", "status": "task_postprocess_end"}],
                                                     "result": True}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace('"7"', '"8"'), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(BODY, headers)


def test_the_signature_is_hmac_sha256_of_id_timestamp_and_body() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    assert len(key) == 32
    headers = signature_headers(secret, "msg_1", 1700000000, BODY)
    expected = hmac.new(key, f"msg_1.1700000000.{BODY}".encode(), hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()


def test_retries_back_off_exponentially_with_jitter_up_to_a_cap() -> None:
    rng = random.Random(4)
    for attempt, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4), (4, 8), (5, 10), (5, 10)], start=1):
        delays = {retry_delay(attempt, base=1.0, cap=10.0, rng=rng) for _ in range(50)}
        assert all(low <= d <= high for d in delays), (attempt, delays)
        assert len(delays) > 1  # jittered, not a fixed schedule
    assert retry_delay(500, base=1.0, cap=3600.0) <= 3600.0
