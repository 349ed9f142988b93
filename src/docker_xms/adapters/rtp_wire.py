"""The wire formats adapters/rtp.py speaks: RTP packets, bencode and rtpengine's ng messages, and the SDP of a
two-leg test call. Pure: no sockets, no clocks. Times are integers in nanoseconds of the caller's monotonic clock.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Mapping, Sequence
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


class MalformedMessage(XmsError, ValueError):
    """Bytes from the network that are not the RTP, bencode, ng or SDP they claim to be."""


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


@dataclass(frozen=True)
class Arrival:
    """One received RTP packet: its sequence number, RTP timestamp and local arrival time."""

    seq: int
    timestamp: int
    arrival_ns: int


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
