"""Media measurements and wire formats: RTP, interarrival jitter, loss, lateness, percentiles, bencode, ng, SDP.

Pure: no sockets, no clocks. Times are integers in nanoseconds from whatever monotonic clock the caller uses,
so that a sender and a receiver on the same host can be compared without conversions.
"""

from __future__ import annotations

import itertools
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from docker_xms.errors import XmsError

PCMU = 0
PCMU_CLOCK_RATE = 8000
PTIME_MS = 20
PCMU_SAMPLES_PER_PACKET = PCMU_CLOCK_RATE * PTIME_MS // 1000
# 0xFF is mu-law silence: a receiver that plays the stream hears nothing rather than full-scale noise.
PCMU_SILENCE = b"\xff" * PCMU_SAMPLES_PER_PACKET

RTP_VERSION = 2
RTP_HEADER_LEN = 12
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32
_NS_PER_MS = 1_000_000


class MalformedMessage(XmsError, ValueError):
    """Bytes from the network that are not the RTP, bencode, ng or SDP they claim to be."""


# --- percentiles -------------------------------------------------------------------------------------


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


# --- RTP ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RtpPacket:
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes = PCMU_SILENCE
    payload_type: int = PCMU
    marker: bool = False
    csrcs: tuple[int, ...] = ()


def build_rtp(packet: RtpPacket) -> bytes:
    if not 0 <= packet.payload_type < 128:
        raise ValueError(f"RTP payload type must be 0..127, not {packet.payload_type}")
    if len(packet.csrcs) > 15:
        raise ValueError("an RTP header carries at most 15 CSRCs")
    first = (RTP_VERSION << 6) | len(packet.csrcs)
    second = (0x80 if packet.marker else 0) | packet.payload_type
    header = struct.pack(
        "!BBHII", first, second, packet.seq % _SEQ_MOD, packet.timestamp % _TS_MOD, packet.ssrc % _TS_MOD
    )
    return header + b"".join(struct.pack("!I", c % _TS_MOD) for c in packet.csrcs) + packet.payload


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse an RTP packet, skipping a header extension and removing padding (RFC 3550 5.1)."""
    if len(data) < RTP_HEADER_LEN:
        raise MalformedMessage(f"an RTP packet has at least {RTP_HEADER_LEN} bytes, this one {len(data)}")
    first, second, seq, timestamp, ssrc = struct.unpack_from("!BBHII", data)
    if first >> 6 != RTP_VERSION:
        raise MalformedMessage(f"RTP version {first >> 6}, expected 2")
    count = first & 0x0F
    offset = RTP_HEADER_LEN + 4 * count
    if len(data) < offset:
        raise MalformedMessage("RTP packet shorter than its CSRC list")
    csrcs = struct.unpack_from(f"!{count}I", data, RTP_HEADER_LEN)
    if first & 0x10:
        if len(data) < offset + 4:
            raise MalformedMessage("RTP packet shorter than its header extension")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
        if len(data) < offset:
            raise MalformedMessage("RTP packet shorter than its header extension")
    end = len(data)
    if first & 0x20:
        pad = data[-1]
        if pad == 0 or end - pad < offset:
            raise MalformedMessage("RTP padding longer than the packet")
        end -= pad
    return RtpPacket(
        seq=seq,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
        payload_type=second & 0x7F,
        marker=bool(second & 0x80),
        csrcs=tuple(csrcs),
    )


def pcmu_packet(index: int, ssrc: int, first_seq: int = 0, first_timestamp: int = 0) -> RtpPacket:
    """The `index`-th 20 ms PCMU packet of a stream, with sequence number and timestamp wrapping as on the wire."""
    return RtpPacket(
        seq=(first_seq + index) % _SEQ_MOD,
        timestamp=(first_timestamp + index * PCMU_SAMPLES_PER_PACKET) % _TS_MOD,
        ssrc=ssrc,
    )


# --- jitter, loss, lateness --------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One received RTP packet: its sequence number, RTP timestamp and local arrival time."""

    seq: int
    timestamp: int
    arrival_ns: int


def _wrapped(delta: int, modulus: int) -> int:
    """A difference of two wrapping counters, as the signed value nearest zero."""
    delta %= modulus
    return delta - modulus if delta >= modulus // 2 else delta


class JitterMeter:
    """RFC 3550 6.4.1 interarrival jitter, fed packet by packet in the order they arrive."""

    def __init__(self, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError("the RTP clock rate must be positive")
        self.clock_rate = clock_rate
        self._jitter = 0.0  # in timestamp units, as the RFC keeps it
        self._last: tuple[int, int] | None = None

    def add(self, timestamp: int, arrival_ns: int) -> None:
        if self._last is not None:
            last_ts, last_arrival = self._last
            # D in timestamp units: the change in transit time between this packet and the one before.
            arrival_units = (arrival_ns - last_arrival) * self.clock_rate / 1e9
            d = arrival_units - _wrapped(timestamp - last_ts, _TS_MOD)
            self._jitter += (abs(d) - self._jitter) / 16
        self._last = (timestamp, arrival_ns)

    @property
    def jitter_ms(self) -> float:
        return self._jitter * 1000 / self.clock_rate


def interarrival_jitter_ms(arrivals: Iterable[Arrival], clock_rate: int = PCMU_CLOCK_RATE) -> float:
    meter = JitterMeter(clock_rate)
    for arrival in arrivals:
        meter.add(arrival.timestamp, arrival.arrival_ns)
    return meter.jitter_ms


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
        extended = 0 if highest is None else highest + _wrapped(arrival.seq - base_seq - highest, _SEQ_MOD)
        if extended in seen:
            duplicates += 1
            continue
        if highest is not None and extended < highest:
            reordered += 1
        seen.add(extended)
        highest = extended if highest is None else max(highest, extended)
        meter.add(arrival.timestamp, arrival.arrival_ns)
        scheduled_ns = origin_ns + _wrapped(arrival.timestamp - origin_ts, _TS_MOD) * 1e9 / clock_rate
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


# --- bencode -----------------------------------------------------------------------------------------

Bencodable: TypeAlias = (
    "int | bytes | str | Sequence[Bencodable] | Mapping[str, Bencodable] | Mapping[bytes, Bencodable]"
)
Decoded: TypeAlias = "int | bytes | list[Decoded] | dict[bytes, Decoded]"
NgValue: TypeAlias = "int | str | list[NgValue] | dict[str, NgValue]"


def bencode(value: Bencodable) -> bytes:
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _key(key: object) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    raise TypeError(f"bencode dictionary keys are strings, not {type(key).__name__}")


def _encode(value: object, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans; send the string or integer the receiver expects")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, str | bytes):
        raw = value.encode() if isinstance(value, str) else value
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, Mapping):
        # Keys sort as raw bytes (the bencode rule), so the same dictionary always encodes the same way.
        items = sorted(((_key(k), v) for k, v in value.items()), key=lambda kv: kv[0])
        for (a, _), (b, _) in itertools.pairwise(items):
            if a == b:
                raise ValueError(f"bencode dictionary key {a!r} given twice")
        out.append(b"d")
        for key, item in items:
            _encode(key, out)
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, Sequence):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"bencode cannot encode {type(value).__name__}")


_INT_RE = re.compile(rb"i(0|-?[1-9][0-9]*)e")
_LEN_RE = re.compile(rb"(0|[1-9][0-9]*):")


def bdecode(data: bytes) -> Decoded:
    """Decode one bencoded value that must span all of `data`. Dictionary key order is not enforced."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise MalformedMessage(f"{len(data) - end} bytes after the bencoded value")
    return value


def _decode(data: bytes, pos: int, depth: int) -> tuple[Decoded, int]:
    if depth > 100:
        raise MalformedMessage("bencode nested too deeply")
    if pos >= len(data):
        raise MalformedMessage("bencoded value ends early")
    lead = data[pos : pos + 1]
    if lead == b"i":
        match = _INT_RE.match(data, pos)
        if not match:
            raise MalformedMessage(f"bad bencoded integer at byte {pos}")
        return int(match.group(1)), match.end()
    if lead == b"l":
        items: list[Decoded] = []
        pos += 1
        while data[pos : pos + 1] != b"e":
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos + 1
    if lead == b"d":
        mapping: dict[bytes, Decoded] = {}
        pos += 1
        while data[pos : pos + 1] != b"e":
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, bytes):
                raise MalformedMessage(f"bencode dictionary key at byte {pos} is not a string")
            if key in mapping:
                raise MalformedMessage(f"bencode dictionary key {key!r} given twice")
            mapping[key], pos = _decode(data, pos, depth + 1)
        return mapping, pos + 1
    match = _LEN_RE.match(data, pos)
    if not match:
        raise MalformedMessage(f"unexpected {lead!r} at byte {pos} of bencoded data")
    start = match.end()
    end = start + int(match.group(1))
    if end > len(data):
        raise MalformedMessage("bencoded string runs past the end")
    return data[start:end], end


def as_text(value: Decoded) -> NgValue:
    """Decoded bencode with strings as text: ng messages, SDP included, are UTF-8 text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [as_text(v) for v in value]
    if isinstance(value, dict):
        return {k.decode("utf-8", "replace"): as_text(v) for k, v in value.items()}
    return value


# --- ng control protocol -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NgMessage:
    cookie: str
    body: dict[str, NgValue]

    @property
    def result(self) -> str:
        return str(self.body.get("result", ""))

    def text(self, key: str) -> str:
        value = self.body.get(key, "")
        return value if isinstance(value, str) else ""


def build_ng(cookie: str, body: Mapping[str, Bencodable]) -> bytes:
    if not cookie or any(c.isspace() for c in cookie):
        raise ValueError(f"an ng cookie is a non-empty word without spaces, not {cookie!r}")
    return cookie.encode() + b" " + bencode(body)


def parse_ng(data: bytes) -> NgMessage:
    cookie, sep, rest = data.partition(b" ")
    if not sep or not cookie:
        raise MalformedMessage("an ng message is '<cookie> <bencoded dictionary>'")
    body = as_text(bdecode(rest))
    if not isinstance(body, dict):
        raise MalformedMessage("the body of an ng message is a bencoded dictionary")
    return NgMessage(cookie.decode("utf-8", "replace"), body)


# --- SDP ---------------------------------------------------------------------------------------------


def sdp_offer(ip: str, port: int, session_id: int = 1, ptime_ms: int = PTIME_MS) -> str:
    """The smallest SDP that offers one PCMU audio stream received at ip:port."""
    family = "IP6" if ":" in ip else "IP4"
    lines = [
        "v=0",
        f"o=docker-xms {session_id} 1 IN {family} {ip}",
        "s=docker-xms",
        f"c=IN {family} {ip}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {PCMU}",
        f"a=rtpmap:{PCMU} PCMU/{PCMU_CLOCK_RATE}",
        f"a=ptime:{ptime_ms}",
        "a=sendrecv",
    ]
    return "\r\n".join(lines) + "\r\n"


def sdp_audio_address(sdp: str) -> tuple[str, int]:
    """Where the SDP's first audio stream wants media sent: the media-level c= line if any, else the session's."""
    session_ip = ""
    media_ip = ""
    port: int | None = None
    in_audio = False
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if port is not None:
                break
            in_audio = line.startswith("m=audio ")
            if in_audio:
                try:
                    port = int(line.split()[1].split("/")[0])
                except (IndexError, ValueError) as exc:
                    raise MalformedMessage(f"bad SDP media line {line!r}") from exc
        elif line.startswith("c="):
            parts = line.split()
            if len(parts) != 3:
                raise MalformedMessage(f"bad SDP connection line {line!r}")
            address = parts[2].split("/")[0]
            if port is None and not in_audio:
                session_ip = address
            elif in_audio:
                media_ip = address
    if port is None:
        raise MalformedMessage("the SDP has no audio stream")
    ip = media_ip or session_ip
    if not ip:
        raise MalformedMessage("the SDP's audio stream has no connection address")
    return ip, port
