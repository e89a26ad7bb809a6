"""Figures: what one measured phase produced, and how percentiles are taken.

Workers send back raw latencies rather than their own percentiles, because
percentiles of several workers cannot be merged; they are computed here over
all samples together (nearest rank, so a reported p99 is a latency that was
really observed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any


def percentile_ms(latencies_ns: Sequence[int], fraction: float) -> float:
    """The nearest-rank percentile of latencies in nanoseconds, in milliseconds.

    NaN when there is no sample, so an empty phase never reads as "0 ms".
    """
    if not latencies_ns:
        return math.nan
    ordered = sorted(latencies_ns)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1] / 1e6


@dataclasses.dataclass
class Figure:
    """One row of the report: a scenario's throughput, latency and memory."""

    group: str
    name: str
    ops_per_s: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    # Server peak resident memory during the phase (VmHWM), MiB; NaN when the
    # phase ran no server of ours (peers, raw SQLite).
    peak_rss_mib: float = math.nan
    # Server CPU microseconds per operation in the measured window (the
    # process's user + system time over the operations completed); NaN when
    # the phase ran no server of ours.
    cpu_us_per_op: float = math.nan
    samples: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    # Free-form extra figures (messages/s, events/s, sizes...).
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""
    skipped: str = ""

    @classmethod
    def from_latencies(
        cls,
        group: str,
        name: str,
        latencies_ns: Sequence[int],
        window_s: float,
        completed: int | None = None,
        **kwargs: Any,
    ) -> Figure:
        """A figure whose throughput is completed operations over the window."""
        done = len(latencies_ns) if completed is None else completed
        return cls(
            group=group,
            name=name,
            ops_per_s=done / window_s if window_s > 0 else math.nan,
            p50_ms=percentile_ms(latencies_ns, 0.50),
            p99_ms=percentile_ms(latencies_ns, 0.99),
            samples=len(latencies_ns),
            **kwargs,
        )

    def as_json(self) -> dict[str, Any]:
        """The figure as JSON-ready data (NaN becomes null)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {key: clean(item) for key, item in value.items()}
            return value

        return {key: clean(value) for key, value in dataclasses.asdict(self).items()}


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing or the divisor is 0."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator
