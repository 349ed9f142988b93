"""Nearest-rank percentiles, as latency reports show them (p50, p99, p99.9, max), and RFC 3550 interarrival
jitter, as a test call and the media measurements report it."""

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


_TS_MOD = 1 << 32


def wrapped(delta: int, modulus: int) -> int:
    """A difference of two wrapping counters (RTP sequence numbers, timestamps), as the signed value nearest zero."""
    delta %= modulus
    return delta - modulus if delta >= modulus // 2 else delta


class JitterMeter:
    """RFC 3550 6.4.1 interarrival jitter, fed packet by packet in the order they arrive.

    The running estimate J += (|D| - J) / 16, where D is the change in transit time from one packet to the next
    in timestamp units; timestamps wrap at 2^32, so their difference is taken as the signed value nearest zero.
    """

    def __init__(self, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError("the RTP clock rate must be positive")
        self.clock_rate = clock_rate
        self._jitter = 0.0  # in timestamp units, as the RFC keeps it
        self._last: tuple[int, int] | None = None

    def add(self, timestamp: int, arrival_ns: int) -> None:
        if self._last is not None:
            last_ts, last_arrival = self._last
            arrival_units = (arrival_ns - last_arrival) * self.clock_rate / 1e9
            d = arrival_units - wrapped(timestamp - last_ts, _TS_MOD)
            self._jitter += (abs(d) - self._jitter) / 16
        self._last = (timestamp, arrival_ns)

    @property
    def jitter_ms(self) -> float:
        return self._jitter * 1000 / self.clock_rate


def interarrival_jitter_ms(packets: Iterable[tuple[int, int]], clock_rate: int) -> float:
    """RFC 3550 interarrival jitter of (RTP timestamp, arrival ns) pairs in the order they arrived, in ms."""
    meter = JitterMeter(clock_rate)
    for timestamp, arrival_ns in packets:
        meter.add(timestamp, arrival_ns)
    return meter.jitter_ms
