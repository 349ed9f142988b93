"""Nearest-rank percentiles, as latency reports show them (p50, p99, p99.9, max)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Percentiles:
    """Nearest-rank percentiles of a set of samples, in the samples' own unit."""

    count: int
    p50: float
    p99: float
    p999: float
    max: float


def nearest_rank(ordered: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile of already sorted samples: the smallest value with `percent`% at or below it.

    Nearest rank always returns a value that was measured, so p99.9 of 1,000 samples is the maximum rather than
    an interpolation nobody observed.
    """
    if not ordered:
        raise ValueError("a percentile of no samples is undefined")
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be within 0..100, not {percent}")
    return float(ordered[_rank(percent, len(ordered)) - 1])


def _rank(percent: float, count: int) -> int:
    # Rounded before the ceiling because 99.9 / 100 * 1000 is 999.0000000000001 in binary floating point.
    return max(1, math.ceil(round(percent * count / 100, 9)))


def percentiles(samples: Iterable[float]) -> Percentiles:
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("percentiles of no samples are undefined")
    return Percentiles(
        count=len(ordered),
        p50=nearest_rank(ordered, 50),
        p99=nearest_rank(ordered, 99),
        p999=nearest_rank(ordered, 99.9),
        max=float(ordered[-1]),
    )


def histogram_percentiles(buckets: Mapping[int, int], overflow: int = 0, overflow_value: float = 0.0) -> Percentiles:
    """Nearest-rank percentiles from a histogram of integer values (value -> count), e.g. cyclictest's.

    Samples beyond the histogram's range are only known to be at most the reported maximum, so they are counted
    at `overflow_value`; that overstates high percentiles rather than hiding them.
    """
    pairs = sorted((value, count) for value, count in buckets.items() if count > 0)
    if overflow > 0:
        pairs.append((math.ceil(overflow_value), overflow))
    total = sum(count for _, count in pairs)
    if total == 0:
        raise ValueError("percentiles of an empty histogram are undefined")

    def at(percent: float) -> float:
        rank = _rank(percent, total)
        seen = 0
        for value, count in pairs:
            seen += count
            if seen >= rank:
                return float(value)
        return float(pairs[-1][0])

    top = max(float(pairs[-1][0]), overflow_value if overflow else 0.0)
    return Percentiles(count=total, p50=at(50), p99=at(99), p999=at(99.9), max=top)


def interarrival_jitter_ms(packets: Iterable[tuple[int, int]], clock_rate: int) -> float:
    """RFC 3550 6.4.1 interarrival jitter of (RTP timestamp, arrival ns) pairs in the order they arrived, in ms.

    The running estimate J += (|D| - J) / 16, where D is the change in transit time from one packet to the next
    in timestamp units; timestamps wrap at 2^32, so their difference is taken as the signed value nearest zero.
    """
    if clock_rate <= 0:
        raise ValueError("the RTP clock rate must be positive")
    jitter = 0.0
    last: tuple[int, int] | None = None
    for timestamp, arrival_ns in packets:
        if last is not None:
            step = (timestamp - last[0]) % (1 << 32)
            step = step - (1 << 32) if step >= 1 << 31 else step
            d = (arrival_ns - last[1]) * clock_rate / 1e9 - step
            jitter += (abs(d) - jitter) / 16
        last = (timestamp, arrival_ns)
    return jitter * 1000 / clock_rate
