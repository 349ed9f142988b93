"""What a receiver saw of an RTP stream: loss, duplicates, reordering, lateness and RFC 3550 interarrival jitter
(the domain's, docker_xms.domain.stats). Used by the media benchmark and the media tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from docker_xms.adapters.rtp_wire import PCMU_CLOCK_RATE, Arrival
from docker_xms.domain import stats
from docker_xms.domain.stats import JitterMeter, Percentiles, percentiles, wrapped

_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32
_NS_PER_MS = 1_000_000


def interarrival_jitter_ms(arrivals: Iterable[Arrival], clock_rate: int = PCMU_CLOCK_RATE) -> float:
    """The RFC 3550 interarrival jitter of received packets, in the order they arrived."""
    return stats.interarrival_jitter_ms(((a.timestamp, a.arrival_ns) for a in arrivals), clock_rate)


@dataclass(frozen=True)
class StreamStats:
    """What a receiver saw of one RTP stream.

    `expected` follows RFC 3550 A.3 (highest extended sequence number minus the first, plus one), so packets lost
    at the very end of a stream are only counted when the caller says how many were sent.
    `delay_ms` holds each unique packet's arrival minus its scheduled time; its origin is the `origin` given to
    `stream_stats`, so with sender and receiver on one clock these are one-way delays.
    """

    expected: int
    received: int
    lost: int
    duplicates: int
    reordered: int
    late: int
    late_after_ms: float
    jitter_ms: float
    delay_ms: tuple[float, ...]

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.expected if self.expected else 0.0

    def delay_percentiles(self) -> Percentiles:
        return percentiles(self.delay_ms)


def stream_stats(
    arrivals: Sequence[Arrival],
    clock_rate: int = PCMU_CLOCK_RATE,
    late_after_ms: float = 40.0,
    origin: tuple[int, int] | None = None,
    sent: int | None = None,
) -> StreamStats:
    """Loss, duplicates, reordering, late packets and jitter of one stream, from arrivals in the order received.

    A packet's scheduled time is `origin_ns + (timestamp - origin_timestamp) / clock_rate`; `origin` is
    (origin_ns, origin_timestamp), by default the first arrival, which then makes lateness relative to it.
    A packet is late when it arrives more than `late_after_ms` after its scheduled time, the way a playout buffer
    of that depth would discard it.
    """
    if not arrivals:
        lost = sent or 0
        return StreamStats(lost, 0, lost, 0, 0, 0, late_after_ms, 0.0, ())
    if origin is None:
        origin = (arrivals[0].arrival_ns, arrivals[0].timestamp)
    origin_ns, origin_ts = origin
    base_seq = arrivals[0].seq
    seen: set[int] = set()
    highest: int | None = None
    duplicates = reordered = late = 0
    delays: list[float] = []
    meter = JitterMeter(clock_rate)
    for arrival in arrivals:
        # Extended sequence numbers, relative to the first packet, so that a 16-bit wrap is not 65,535 losses.
        extended = 0 if highest is None else highest + wrapped(arrival.seq - base_seq - highest, _SEQ_MOD)
        if extended in seen:
            duplicates += 1
            continue
        if highest is not None and extended < highest:
            reordered += 1
        seen.add(extended)
        highest = extended if highest is None else max(highest, extended)
        meter.add(arrival.timestamp, arrival.arrival_ns)
        scheduled_ns = origin_ns + wrapped(arrival.timestamp - origin_ts, _TS_MOD) * 1e9 / clock_rate
        delay = (arrival.arrival_ns - scheduled_ns) / _NS_PER_MS
        delays.append(delay)
        if delay > late_after_ms:
            late += 1
    expected = max(seen) - min(seen) + 1
    if sent is not None:
        expected = max(expected, sent)
    return StreamStats(
        expected=expected,
        received=len(seen),
        lost=max(0, expected - len(seen)),
        duplicates=duplicates,
        reordered=reordered,
        late=late,
        late_after_ms=late_after_ms,
        jitter_ms=meter.jitter_ms,
        delay_ms=tuple(delays),
    )
