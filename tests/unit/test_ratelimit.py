from __future__ import annotations

import pytest

from fluxrun.api import ratelimit
from fluxrun.api.ratelimit import RateLimiter
from fluxrun.errors import RateLimitError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(per_second=2, burst=3, clock=clock)
    assert [limiter.take("k") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("k") == pytest.approx(0.5)  # one token in half a second
    clock.now += 0.5
    assert limiter.take("k") == 0
    assert limiter.take("k") == pytest.approx(0.5)
    clock.now += 100  # refills to the burst, not beyond
    assert [limiter.take("k") for _ in range(4)][-1] > 0


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    clock = Clock()
    limiter = RateLimiter(per_second=0.25, burst=1, clock=clock)
    limiter.check("key", "10.0.0.1")
    with pytest.raises(RateLimitError) as refused:
        limiter.check("key", "10.0.0.1")
    assert refused.value.http_status == 429 and refused.value.headers == {"Retry-After": "4"}
    clock.now += 3.5
    with pytest.raises(RateLimitError) as refused:
        limiter.check("key", "10.0.0.1")
    assert refused.value.headers == {"Retry-After": "1"}  # 0.5 s left: rounded up, never 0


def test_keys_and_addresses_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(per_second=1, burst=1, clock=Clock())
    limiter.check("a", "10.0.0.1")
    limiter.check("b", "10.0.0.1")
    limiter.check("", "10.0.0.1")
    limiter.check("", "10.0.0.2")
    with pytest.raises(RateLimitError, match="this address"):
        limiter.check("", "10.0.0.1")
    with pytest.raises(RateLimitError, match="this API key"):
        limiter.check("a", "10.0.0.9")


def test_the_least_recently_used_buckets_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 3)
    limiter = RateLimiter(per_second=1, burst=1, clock=Clock())
    for name in ("a", "b", "c"):
        limiter.take(name)
    assert limiter.take("a") > 0  # "a" used again: now the most recent
    limiter.take("d")  # 4 buckets: "b" goes
    assert len(limiter._buckets) == 3
    assert limiter.take("a") > 0 and limiter.take("c") > 0
    assert limiter.take("b") == 0  # forgotten, so full again
