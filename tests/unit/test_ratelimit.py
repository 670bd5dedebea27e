"""The sliding-window rate limiter's arithmetic, on a hand-moved clock."""

from __future__ import annotations

from kvs.auth.ratelimit import RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limit_per_caller_and_the_window_slides() -> None:
    clock = Clock()
    limiter = RateLimiter(10, 1.0, clock)
    assert all(limiter.check("a") is None for _ in range(10))
    wait = limiter.check("a")
    assert wait is not None and 0 < wait <= 1.0
    assert limiter.check("b") is None  # another caller is unaffected
    # Half-way through the next window, half of the previous window still counts: 5 more.
    clock.now += 1.5
    allowed = sum(limiter.check("a") is None for _ in range(10))
    assert allowed == 5
    # Two windows later the past is forgotten.
    clock.now += 2.0
    assert sum(limiter.check("a") is None for _ in range(20)) == 10


def test_no_double_burst_at_a_window_boundary() -> None:
    clock = Clock()
    limiter = RateLimiter(100, 1.0, clock)
    clock.now = 1000.9
    assert sum(limiter.check("a") is None for _ in range(200)) == 100
    clock.now = 1001.05  # a fixed window would allow 100 more here
    assert sum(limiter.check("a") is None for _ in range(200)) <= 10


def test_retry_after_is_when_a_request_would_pass() -> None:
    clock = Clock()
    limiter = RateLimiter(4, 10.0, clock)
    for _ in range(4):
        limiter.check("a")
    wait = limiter.check("a")
    assert wait is not None
    clock.now += wait + 1e-6
    assert limiter.check("a") is None
    assert retry_after_header(0.2) == "1" and retry_after_header(3.01) == "4"
    assert limiter.refused == 1
