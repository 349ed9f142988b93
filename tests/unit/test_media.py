from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lab.rtpstats import interarrival_jitter_ms, stream_stats

from docker_xms.adapters.rtp_wire import (
    PCMU_SILENCE,
    Arrival,
    MalformedMessage,
    RtpPacket,
    as_text,
    bdecode,
    bencode,
    build_ng,
    build_rtp,
    parse_ng,
    parse_rtp,
    pcmu_packet,
    sdp_audio_address,
    sdp_offer,
)
from docker_xms.domain.stats import JitterMeter, histogram_percentiles, nearest_rank, percentiles

MS = 1_000_000


def on_time(count: int, first_seq: int = 0, first_ts: int = 0, start_ns: int = 0) -> list[Arrival]:
    return [
        Arrival((first_seq + i) % 65536, (first_ts + 160 * i) % (1 << 32), start_ns + 20 * MS * i) for i in range(count)
    ]


# --- percentiles -------------------------------------------------------------------------------------


def test_nearest_rank_of_one_to_hundred() -> None:
    values = [float(v) for v in range(1, 101)]
    assert nearest_rank(values, 50) == 50
    assert nearest_rank(values, 99) == 99
    assert nearest_rank(values, 99.9) == 100
    assert nearest_rank(values, 0) == 1
    assert nearest_rank(values, 100) == 100


def test_percentiles_pick_measured_values_not_interpolations() -> None:
    result = percentiles([5, 1, 3, 2, 4])
    assert (result.count, result.p50, result.p99, result.p999, result.max) == (5, 3, 5, 5, 5)


def test_p999_needs_a_thousand_samples_to_differ_from_the_max() -> None:
    samples = [10.0] * 998 + [500.0, 900.0]
    result = percentiles(samples)
    assert result.p99 == 10
    assert result.p999 == 500
    assert result.max == 900


def test_percentiles_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentiles([])


def test_histogram_percentiles_match_raw_samples() -> None:
    samples = [3] * 50 + [4] * 45 + [9] * 4 + [40]
    buckets: dict[int, int] = {}
    for s in samples:
        buckets[s] = buckets.get(s, 0) + 1
    assert histogram_percentiles(buckets) == percentiles(samples)


def test_histogram_overflows_count_at_the_reported_maximum() -> None:
    result = histogram_percentiles({5: 98}, overflow=2, overflow_value=12_345)
    assert result.count == 100
    assert result.p50 == 5
    assert result.p99 == 12_345
    assert result.max == 12_345


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=300))
def test_percentiles_are_ordered_and_measured(samples: list[int]) -> None:
    result = percentiles(samples)
    assert result.p50 <= result.p99 <= result.p999 <= result.max == max(samples)
    assert {result.p50, result.p99, result.p999} <= set(map(float, samples))


# --- jitter ------------------------------------------------------------------------------------------


def test_perfectly_paced_stream_has_no_jitter() -> None:
    assert interarrival_jitter_ms(on_time(100)) == 0.0


def test_one_late_packet_moves_jitter_by_a_sixteenth_of_the_deviation() -> None:
    arrivals = on_time(3)
    arrivals[1] = Arrival(1, 160, 20 * MS + 16 * MS)
    # D(0,1) = +16 ms -> J = 1 ms; D(1,2) = -16 ms -> J = 1 + (16 - 1)/16.
    assert interarrival_jitter_ms(arrivals) == pytest.approx(1 + 15 / 16)


def test_constant_offset_is_not_jitter() -> None:
    assert interarrival_jitter_ms(on_time(50, start_ns=123 * MS)) == 0.0


def test_jitter_converges_to_mean_absolute_deviation() -> None:
    meter = JitterMeter(8000)
    # Transit alternates 0 and 2 ms, so |D| is always 2 ms and J tends to 2 ms.
    for i in range(500):
        meter.add(160 * i, 20 * MS * i + (2 * MS if i % 2 else 0))
    assert meter.jitter_ms == pytest.approx(2.0, rel=1e-6)


def test_jitter_survives_timestamp_wrap() -> None:
    assert interarrival_jitter_ms(on_time(20, first_ts=(1 << 32) - 800)) == pytest.approx(0.0, abs=1e-9)


def test_jitter_needs_a_clock_rate() -> None:
    with pytest.raises(ValueError, match="clock rate"):
        JitterMeter(0)


# --- loss, lateness ----------------------------------------------------------------------------------


def test_complete_stream_has_no_loss_nor_lateness() -> None:
    stats = stream_stats(on_time(50))
    assert (stats.expected, stats.received, stats.lost, stats.late, stats.duplicates) == (50, 50, 0, 0, 0)
    assert stats.delay_percentiles().max == 0


def test_gaps_count_as_lost() -> None:
    arrivals = [a for a in on_time(100) if a.seq not in (10, 11, 50)]
    stats = stream_stats(arrivals)
    assert stats.lost == 3
    assert stats.loss_ratio == pytest.approx(0.03)


def test_losses_at_the_end_need_the_sent_count() -> None:
    arrivals = on_time(100)[:90]
    assert stream_stats(arrivals).lost == 0
    assert stream_stats(arrivals, sent=100).lost == 10


def test_sequence_wrap_is_not_loss() -> None:
    stats = stream_stats(on_time(100, first_seq=65500))
    assert (stats.expected, stats.lost, stats.reordered) == (100, 0, 0)


def test_duplicates_and_reordering() -> None:
    arrivals = on_time(5)
    swapped = [arrivals[0], arrivals[2], arrivals[1], arrivals[1], arrivals[3], arrivals[4]]
    stats = stream_stats(swapped)
    assert (stats.received, stats.duplicates, stats.reordered, stats.lost) == (5, 1, 1, 0)


def test_late_means_later_than_the_threshold_after_schedule() -> None:
    arrivals = on_time(10)
    arrivals[4] = Arrival(4, 640, 80 * MS + 41 * MS)
    arrivals[6] = Arrival(6, 960, 120 * MS + 40 * MS)
    assert stream_stats(arrivals, late_after_ms=40).late == 1
    assert stream_stats(arrivals, late_after_ms=10).late == 2


def test_origin_turns_delays_into_one_way_delays() -> None:
    # Sent from t=0 with timestamp 1000, every packet arrives 3 ms later.
    arrivals = [Arrival(i, 1000 + 160 * i, 3 * MS + 20 * MS * i) for i in range(10)]
    stats = stream_stats(arrivals, origin=(0, 1000))
    assert stats.delay_percentiles().p50 == pytest.approx(3.0)
    assert stats.late == 0


def test_nothing_received() -> None:
    stats = stream_stats([], sent=25)
    assert (stats.expected, stats.received, stats.lost) == (25, 0, 25)


# --- RTP ---------------------------------------------------------------------------------------------


def test_pcmu_packet_on_the_wire() -> None:
    data = build_rtp(RtpPacket(seq=0x1234, timestamp=0xDEADBEEF, ssrc=0x01020304))
    assert data[:12] == bytes.fromhex("80 00 1234 deadbeef 01020304")
    assert len(data) == 12 + 160
    assert data[12:] == PCMU_SILENCE


def test_parse_skips_csrcs_extension_and_padding() -> None:
    header = bytes.fromhex("b1 e0 0001 00000002 00000003") + bytes.fromhex("00000004")
    extension = bytes.fromhex("bede 0001 11223344")
    data = header + extension + b"abc" + b"\x00\x00\x03"
    packet = parse_rtp(data)
    assert packet == RtpPacket(1, 2, 3, b"abc", payload_type=96, marker=True, csrcs=(4,))


def test_stream_packets_wrap() -> None:
    packet = pcmu_packet(2, ssrc=7, first_seq=65535, first_timestamp=(1 << 32) - 160)
    assert (packet.seq, packet.timestamp) == (1, 160)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x00", "at least 12"),
        (bytes.fromhex("40 00 0000 00000000 00000000"), "version 1"),
        (bytes.fromhex("82 00 0000 00000000 00000000 00000001"), "CSRC"),
        (bytes.fromhex("a0 00 0000 00000000 00000000 05"), "padding"),
    ],
)
def test_malformed_rtp(data: bytes, message: str) -> None:
    with pytest.raises(MalformedMessage, match=message):
        parse_rtp(data)


rtp_packets = st.builds(
    RtpPacket,
    seq=st.integers(0, 65535),
    timestamp=st.integers(0, (1 << 32) - 1),
    ssrc=st.integers(0, (1 << 32) - 1),
    payload=st.binary(max_size=200),
    payload_type=st.integers(0, 127),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, (1 << 32) - 1), max_size=15).map(tuple),
)


@given(rtp_packets)
def test_rtp_round_trip(packet: RtpPacket) -> None:
    assert parse_rtp(build_rtp(packet)) == packet


# --- bencode and ng ----------------------------------------------------------------------------------


def test_bencode_known_values() -> None:
    assert bencode({"command": "ping"}) == b"d7:command4:pinge"
    assert bencode([1, -2, b"x", "\u00e9"]) == b"li1ei-2e1:x2:\xc3\xa9e"
    assert bencode({"b": 1, "a": [0]}) == b"d1:ali0ee1:bi1ee"


def test_bencode_refuses_booleans_and_floats() -> None:
    with pytest.raises(TypeError):
        bencode(True)
    with pytest.raises(TypeError):
        bencode({"x": 1.5})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data", [b"i01e", b"i-0e", b"ie", b"5:abc", b"d1:ai1e", b"li1e", b"i1ei2e", b"di1ei2ee", b"x", b"d1:a0:1:a0:e"]
)
def test_bdecode_refuses_malformed(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        bdecode(data)


def test_bdecode_accepts_unsorted_keys() -> None:
    assert bdecode(b"d1:bi1e1:ai2ee") == {b"b": 1, b"a": 2}


bencodable = st.recursive(
    st.integers(-(10**20), 10**20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.binary(max_size=8), children, max_size=5),
    max_leaves=30,
)


@given(bencodable)
def test_bencode_round_trip(value: object) -> None:
    encoded = bencode(value)  # type: ignore[arg-type]
    assert bdecode(encoded) == value
    assert bencode(bdecode(encoded)) == encoded


def test_ng_ping_on_the_wire() -> None:
    assert build_ng("c1", {"command": "ping"}) == b"c1 d7:command4:pinge"
    reply = parse_ng(b"c1 d6:result4:ponge")
    assert (reply.cookie, reply.result) == ("c1", "pong")


def test_ng_error_reason_is_text() -> None:
    reply = parse_ng(b"x9 d6:result5:error12:error-reason12:Unknown calle")
    assert reply.result == "error"
    assert reply.text("error-reason") == "Unknown call"


@pytest.mark.parametrize("data", [b"d6:result4:ponge", b" d6:result4:ponge", b"c1 li1ee"])
def test_ng_malformed(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_ng(data)


def test_ng_cookie_must_be_one_word() -> None:
    with pytest.raises(ValueError, match="cookie"):
        build_ng("a b", {"command": "ping"})


def test_as_text_decodes_nested_strings() -> None:
    assert as_text({b"a": [b"x", 1]}) == {"a": ["x", 1]}


# --- SDP ---------------------------------------------------------------------------------------------


def test_offer_round_trips_its_address() -> None:
    sdp = sdp_offer("127.0.0.1", 40000)
    assert "m=audio 40000 RTP/AVP 0\r\n" in sdp
    assert "a=rtpmap:0 PCMU/8000\r\n" in sdp
    assert sdp_audio_address(sdp) == ("127.0.0.1", 40000)


def test_rtpengine_answer_address() -> None:
    # As rtpengine 10.5 rewrote an offer from 172.17.0.1 in a container at 172.17.0.2.
    sdp = (
        "v=0\r\no=docker-xms 1 1 IN IP4 172.17.0.1\r\ns=docker-xms\r\nc=IN IP4 172.17.0.2\r\nt=0 0\r\n"
        "m=audio 30014 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\na=rtcp:30015\r\na=ptime:20\r\n"
    )
    assert sdp_audio_address(sdp) == ("172.17.0.2", 30014)


def test_media_level_connection_wins() -> None:
    sdp = "v=0\nc=IN IP4 10.0.0.1\nm=video 5000 RTP/AVP 96\nc=IN IP4 10.0.0.9\nm=audio 6000 RTP/AVP 0\nc=IN IP4 10.0.0.2\n"
    assert sdp_audio_address(sdp) == ("10.0.0.2", 6000)


def test_sdp_without_audio() -> None:
    with pytest.raises(MalformedMessage, match="no audio"):
        sdp_audio_address("v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 5000 RTP/AVP 96\r\n")
