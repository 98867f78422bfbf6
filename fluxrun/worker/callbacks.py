"""The deliverer: a worker's background thread that sends the callbacks tasks owe.

Deliveries live in the store (a row per task with a callback URL, written in the
transaction that ended the task), so nothing is held in memory: a deliverer claims a due
delivery for one try, POSTs Task/Detail's answer for the task, and records the outcome:
- 2xx: delivered;
- 410 Gone: the receiver wants no more; stop at once;
- any other status (3xx included: redirects are not followed), a timeout or a connection
  error: try again after an exponential, jittered back-off, up to a number of tries and an
  age; every try carries the same ``webhook-id`` (a fresh timestamp and signature);
- a URL the SSRF guard refuses: failed at once, with the rule in ``last_error``.
A deliverer that dies mid-try leaves a claim that expires; the delivery is then due again,
for this process after a restart or for any other worker.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import httpx

from fluxrun.config import Settings
from fluxrun.errors import CallbackRefused, DatabaseUnavailable
from fluxrun.logs import task_scope
from fluxrun.storage.base import OutputStorage
from fluxrun.store.base import Delivery, DeliveryState, TaskStore
from fluxrun.wire import detail_wire, json_text
from fluxrun.worker.webhooks import WebhookSender, signature_headers

log = logging.getLogger("fluxrun.callbacks")


def retry_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Wait after failed try number ``attempt``: base, 2 x base, 4 x base... up to ``cap``,
    each between half and all of that ("equal jitter"), so receivers that fail together
    are not retried in lockstep."""
    ceiling = min(cap, base * 2 ** min(attempt - 1, 62))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        storage: OutputStorage,
        deliverer_id: str,
        sender: WebhookSender | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.deliverer_id = deliverer_id
        self.sender = sender or WebhookSender(settings.callback_allowlist, settings.callback_timeout_seconds)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="callbacks", daemon=True)

    # -- the thread -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look for due deliveries now (a task with a callback has just ended)."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the try in flight (bounded by the callback timeout), then end the thread.
        A try cut short by a hard exit is not lost: its claim expires and it is made again."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.settings.callback_claim_seconds)
        self.sender.close()
        log.info("callback deliverer stopped%s", " (a try was still in flight)" if self._thread.is_alive() else "")

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Cleared before looking, so a wake-up during the look is not lost.
            self._wake.clear()
            try:
                self.run_once()
            except DatabaseUnavailable:  # the store logged it: wait, then go on
                pass
            except Exception:
                log.exception("callback deliverer")
            self._wake.wait(self.settings.callback_poll_seconds)

    def run_once(self) -> int:
        """Make one try of every delivery due now; the number of tries made."""
        tries = 0
        while not self._stop.is_set():
            claimed = self.store.claim_deliveries(self.deliverer_id, self.settings.callback_claim_seconds, time.time())
            if not claimed:
                break
            for delivery in claimed:
                with task_scope(delivery.task_id):
                    self.attempt(delivery)
                tries += 1
        return tries

    # -- one try --------------------------------------------------------------------------
    def attempt(self, delivery: Delivery) -> None:
        settings = self.settings
        if delivery.attempt > settings.callback_max_attempts:
            # Earlier tries were cut short (their deliverer died): do not try forever.
            self._end(delivery, "failed", None, f"gave up: {settings.callback_max_attempts} tries started")
            return
        task = self.store.get_task(delivery.project_id, task_id=delivery.task_id)
        project = self.store.get_project(delivery.project_id)
        if task is None or project is None:
            self._end(delivery, "failed", None, "the task or its project no longer exists")
            return
        body = json_text(detail_wire(task, self.storage, settings.effective_public_url))
        headers = signature_headers(project.webhook_secret, delivery.webhook_id, int(time.time()), body)
        try:
            status = self.sender.post(delivery.url, body, headers)
        except CallbackRefused as exc:
            self._end(delivery, "failed", None, f"callbackUrl refused: {exc}")
            return
        except (httpx.HTTPError, OSError) as exc:  # timeouts, refused connections, DNS failures
            self._retry(delivery, None, _describe(exc))
            return
        if 200 <= status < 300:
            self._end(delivery, "delivered", status)
        elif status == 410:
            self._end(delivery, "gone", status, "410 Gone: the receiver asked for no more tries")
        elif 300 <= status < 400:
            self._retry(delivery, status, f"HTTP {status}: redirects are not followed")
        else:
            self._retry(delivery, status, f"HTTP {status}")

    def _retry(self, delivery: Delivery, status: int | None, error: str) -> None:
        settings = self.settings
        now = time.time()
        at = now + retry_delay(delivery.attempt, settings.callback_retry_base_seconds,
                               settings.callback_retry_max_seconds)
        if delivery.attempt >= settings.callback_max_attempts:
            self._end(delivery, "failed", status, f"gave up after {delivery.attempt} tries; last: {error}")
        elif at > delivery.created_at + settings.callback_max_age_seconds:
            age = f"{settings.callback_max_age_seconds:g} s"
            self._end(delivery, "failed", status, f"gave up after {age} ({delivery.attempt} tries); last: {error}")
        elif self.store.retry_delivery(delivery, at, status, error):
            log.warning("callback %s (task %s) try %d failed: %s; next try in %.1f s",
                        delivery.webhook_id, delivery.task_id, delivery.attempt, error, at - now)
        else:
            log.warning("callback %s: try %d outlived its claim; another try owns it", delivery.webhook_id,
                        delivery.attempt)

    def _end(self, delivery: Delivery, state: DeliveryState, status: int | None, error: str = "") -> None:
        if not self.store.end_delivery(delivery, state, time.time(), status, error):
            log.warning("callback %s: try %d outlived its claim; another try owns it", delivery.webhook_id,
                        delivery.attempt)
        elif state == "delivered":
            log.info("callback %s (task %s) delivered to %s on try %d (HTTP %s)", delivery.webhook_id,
                     delivery.task_id, delivery.url, delivery.attempt, status)
        else:
            log.warning("callback %s (task %s) to %s %s: %s", delivery.webhook_id, delivery.task_id,
                        delivery.url, state, error)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
