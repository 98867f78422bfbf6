"""The per-key request rate: a token bucket per ``x-api-key`` presented.

Every POST (the /v1 endpoints, the playground's login) takes a token from the bucket of the
API key it presents; a request without a key takes one from its client address's bucket
instead. A bucket holds FLUXRUN_RATE_LIMIT_BURST tokens and refills at
FLUXRUN_RATE_LIMIT_PER_SECOND; an empty one answers HTTP 429 with ``Retry-After`` (whole
seconds, at least 1) and section 7's body. The check runs before authentication, so a flood
with one key costs no database lookup and no HMAC; a key that fails authentication still
used its token. GET routes (output files, health, metrics, the playground's page) are not
counted.

Buckets live in this process's memory: with N API processes behind a load balancer a key may
send up to N times the rate. At most ``MAX_BUCKETS`` are kept, the least recently used
dropped first (it comes back full). Keys are kept as digests, so a long header costs no
memory. Each key presented has a bucket of its own, invented ones too: a flood that rotates
invented keys is only refused by authentication, and a rate per address against it is the
reverse proxy's job (behind one, every client has the proxy's address).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.requests import HTTPConnection

from fluxrun.config import Settings
from fluxrun.errors import RateLimitError

MAX_BUCKETS = 10_000


class RateLimiter:
    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # digest -> (tokens, when)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter | None:
        """The limiter the settings ask for; None when FLUXRUN_RATE_LIMIT_PER_SECOND is 0."""
        if settings.rate_limit_per_second <= 0:
            return None
        return cls(settings.rate_limit_per_second, settings.rate_limit_burst)

    def check(self, api_key: str, address: str) -> None:
        """Take one token for this request, or RateLimitError saying when to come back."""
        by_key = bool(api_key)
        wait = self.take(f"key {api_key}" if by_key else f"address {address}")
        if wait > 0:
            raise RateLimitError.too_many_requests(self.per_second, self.burst, max(1, math.ceil(wait)), by_key)

    def take(self, name: str) -> float:
        """0 when the bucket named ``name`` had a token (now taken); else the seconds until it has one."""
        digest = hashlib.blake2b(name.encode(), digest_size=16).digest()
        now = self._clock()
        tokens, then = self._buckets.pop(digest, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.per_second)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.per_second
        self._buckets[digest] = (tokens, now)  # last: the most recently used
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return wait


async def limit_rate(connection: HTTPConnection) -> None:
    """The app-wide dependency: counts each POST against its key's bucket.

    Async, so it runs on the event loop's one thread and the buckets need no lock.
    """
    limiter: RateLimiter | None = connection.app.state.fluxrun_rate_limiter
    if limiter is None or connection.scope["type"] != "http" or connection.scope.get("method") != "POST":
        return
    address = connection.client.host if connection.client else ""
    limiter.check(connection.headers.get("x-api-key", "").strip(), address)
