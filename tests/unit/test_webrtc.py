"""Reading a browser's getStats() list into what a browser test call reports, and the janus profile's data."""

from __future__ import annotations

from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain import webrtc
from docker_xms.domain.recipes import profile_files

# A trimmed getStats() list as Chromium gives it for a connected echo call.
STATS = [
    {"id": "T01", "type": "transport", "dtlsState": "connected", "selectedCandidatePairId": "CP1"},
    {
        "id": "CP1",
        "type": "candidate-pair",
        "nominated": True,
        "state": "succeeded",
        "currentRoundTripTime": 0.0042,
        "localCandidateId": "L1",
        "remoteCandidateId": "R1",
    },
    {"id": "L1", "type": "local-candidate", "address": "10.201.0.2", "port": 50000, "candidateType": "host"},
    {"id": "R1", "type": "remote-candidate", "address": "192.0.2.2", "port": 20004, "candidateType": "host"},
    {
        "id": "IA",
        "type": "inbound-rtp",
        "kind": "audio",
        "packetsReceived": 500,
        "bytesReceived": 40000,
        "packetsLost": 1,
        "jitter": 0.002,
    },
    {
        "id": "IV",
        "type": "inbound-rtp",
        "kind": "video",
        "packetsReceived": 300,
        "bytesReceived": 250000,
        "packetsLost": 0,
        "jitter": 0.004,
        "framesDropped": 2,
    },
    {"id": "OA", "type": "outbound-rtp", "kind": "audio", "packetsSent": 501},
    {"id": "OV", "type": "outbound-rtp", "kind": "video", "packetsSent": 302},
]


def test_a_connected_call_reads_its_streams_round_trip_and_candidates() -> None:
    snap = webrtc.snapshot(STATS, "connected")
    assert snap.connected
    assert snap.rtt_ms is not None
    assert abs(snap.rtt_ms - 4.2) < 1e-9
    assert snap.remote_candidate == "192.0.2.2:20004 (host)"
    assert snap.local_candidate == "10.201.0.2:50000 (host)"
    audio, video = snap.stream("audio"), snap.stream("video")
    assert audio == webrtc.Stream("audio", 501, 500, 40000, 1, 2.0, None)
    assert video == webrtc.Stream("video", 302, 300, 250000, 0, 4.0, 2)


def test_during_is_the_difference_of_two_readings() -> None:
    first = webrtc.Stream("video", 100, 90, 1000, 1, 3.0, 1)
    last = webrtc.Stream("video", 600, 590, 9000, 2, 5.0, 4)
    assert webrtc.during(first, last) == webrtc.Stream("video", 500, 500, 8000, 1, 5.0, 3)


def test_a_call_that_never_connected_has_no_streams() -> None:
    snap = webrtc.snapshot([{"id": "T", "type": "transport", "dtlsState": "new"}])
    assert not snap.connected
    assert snap.streams == ()
    assert snap.rtt_ms is None


def test_the_janus_profile_tells_janus_its_media_range_and_advertised_address() -> None:
    profile = load_profile("janus")
    assert profile.takes_advertise
    assert profile.media is not None
    assert (profile.media.start, profile.media.end) == (20000, 20999)
    assert {p.name for p in profile.host_port_placeholders()} == {"http", "web"}
    values = {"advertised": profile.advertised("203.0.113.7"), "http_port": 40000, "web_port": 40001}
    files = {f.path: f.content for f in profile_files(profile, 20100, 20199, values)}
    jcfg = files["/etc/janus/janus.jcfg"]
    assert 'rtp_port_range = "20100-20199"' in jcfg
    assert 'nat_1_1_mapping = "203.0.113.7"' in jcfg
    assert '"40001" ? "40000" : "8088"' in files["/usr/share/janus/demos/settings.js"]
    # Without an advertised address Janus announces the container's own.
    plain = {f.path: f.content for f in profile_files(profile)}
    assert "nat_1_1_mapping" not in plain["/etc/janus/janus.jcfg"]
