"""A browser's WebRTC statistics (`RTCPeerConnection.getStats()`) read into what a test call reports. Pure data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("audio", "video")


@dataclass(frozen=True)
class Stream:
    """One kind of media at one moment: what the browser sent and what came back to it (the echo)."""

    kind: str
    packets_sent: int
    packets_received: int
    bytes_received: int
    packets_lost: int
    jitter_ms: float | None
    frames_dropped: int | None


@dataclass(frozen=True)
class Snapshot:
    """One getStats() reading of a call."""

    connection: str
    dtls: str
    streams: tuple[Stream, ...]
    rtt_ms: float | None
    # The selected candidate pair's ends, "address:port (type)".
    local_candidate: str
    remote_candidate: str

    def stream(self, kind: str) -> Stream | None:
        return next((s for s in self.streams if s.kind == kind), None)

    @property
    def connected(self) -> bool:
        return self.dtls == "connected"


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _candidate(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return ""
    address = entry.get("address") or entry.get("ip") or ""
    return f"{address}:{entry.get('port', '')} ({entry.get('candidateType', '')})"


def snapshot(stats: Sequence[Mapping[str, Any]], connection: str = "") -> Snapshot:
    """What a test call reports from one getStats() list (each entry an RTCStats dictionary)."""
    by_id = {str(s.get("id")): s for s in stats}
    transport = next((s for s in stats if s.get("type") == "transport"), {})
    pair = by_id.get(str(transport.get("selectedCandidatePairId", "")))
    if pair is None:
        pair = next((s for s in stats if s.get("type") == "candidate-pair" and s.get("nominated")), None)
    rtt = pair.get("currentRoundTripTime") if pair else None
    streams = []
    for kind in KINDS:
        inbound = [s for s in stats if s.get("type") == "inbound-rtp" and s.get("kind") == kind]
        outbound = [s for s in stats if s.get("type") == "outbound-rtp" and s.get("kind") == kind]
        if not inbound and not outbound:
            continue
        jitters = [float(s["jitter"]) * 1000 for s in inbound if isinstance(s.get("jitter"), int | float)]
        dropped = [_int(s.get("framesDropped")) for s in inbound if "framesDropped" in s]
        streams.append(
            Stream(
                kind=kind,
                packets_sent=sum(_int(s.get("packetsSent")) for s in outbound),
                packets_received=sum(_int(s.get("packetsReceived")) for s in inbound),
                bytes_received=sum(_int(s.get("bytesReceived")) for s in inbound),
                packets_lost=sum(_int(s.get("packetsLost")) for s in inbound),
                jitter_ms=max(jitters) if jitters else None,
                frames_dropped=sum(dropped) if dropped else None,
            )
        )
    return Snapshot(
        connection=connection,
        dtls=str(transport.get("dtlsState", "")),
        streams=tuple(streams),
        rtt_ms=float(rtt) * 1000 if isinstance(rtt, int | float) else None,
        local_candidate=_candidate(by_id.get(str(pair.get("localCandidateId", "")))) if pair else "",
        remote_candidate=_candidate(by_id.get(str(pair.get("remoteCandidateId", "")))) if pair else "",
    )


def during(first: Stream, last: Stream) -> Stream:
    """What one stream did between two readings (its jitter and frames dropped: as at the last reading)."""
    return Stream(
        kind=last.kind,
        packets_sent=last.packets_sent - first.packets_sent,
        packets_received=last.packets_received - first.packets_received,
        bytes_received=last.bytes_received - first.bytes_received,
        packets_lost=last.packets_lost - first.packets_lost,
        jitter_ms=last.jitter_ms,
        frames_dropped=(last.frames_dropped - (first.frames_dropped or 0) if last.frames_dropped is not None else None),
    )
