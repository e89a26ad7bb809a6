"""Per-caller request rate limits: one token bucket per caller.

Why a token bucket: it allows a burst (a runtime that wakes up and replays a
few calls) while bounding the sustained rate, and its state is two numbers per
caller. The clock is injected (seconds, any origin), so tests move time instead
of sleeping. A clock that steps backwards only loses refill, never blocks a
caller for the length of the step.

The table of buckets is bounded: when it grows past ``max_callers``, buckets
that have refilled completely are dropped (they hold no information a fresh
bucket would not), so many distinct callers cannot grow memory without bound.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate`` requests per second sustained, ``burst`` at once, per caller key."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float],
                 max_callers: int = 10_000) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(max(1, burst))
        self._clock = clock
        self._max_callers = max_callers
        self._buckets: dict[str, _Bucket] = {}

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
        bucket.updated = now

    def acquire(self, caller: str) -> float:
        """Take one token; 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= self._max_callers:
                self._evict(now)
            bucket = self._buckets[caller] = _Bucket(self.burst, now)
        else:
            self._refill(bucket, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _evict(self, now: float) -> None:
        for key in list(self._buckets):
            bucket = self._buckets[key]
            self._refill(bucket, now)
            if bucket.tokens >= self.burst:
                del self._buckets[key]
        if len(self._buckets) >= self._max_callers:
            # Everyone is busy: forget the oldest half rather than grow. They
            # get a fresh burst, which is the lesser harm than unbounded memory.
            for key in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[key]

    @property
    def callers(self) -> int:
        return len(self._buckets)
