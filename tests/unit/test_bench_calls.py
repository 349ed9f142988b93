"""The calls section's pure parts: its setting, SIPp's statistics and response-time files, RTP counts, rounds pooled."""

from __future__ import annotations

import pytest
from bench.calls import (
    CLOCK_RATE,
    CallsPlan,
    peak_overlap,
    plan_from,
    pooled,
    response_times_ms,
    rtp_summary,
    sipp_statistics,
    split_calls,
)

from docker_xms.domain.stats import interarrival_jitter_ms

# The header and a last row as SIPp 3.6.1 writes them with -trace_stat (trimmed to the columns read, plus a few
# around them; StartTime holds a tab, as SIPp's own does).
STAT_HEADER = (
    "StartTime;CurrentTime;TotalCallCreated;CurrentCall;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);"
    "FailedCall(C);FailedMaxUDPRetrans(P);FailedMaxUDPRetrans(C);FailedUnexpectedMessage(C);"
    "FailedTimeoutOnRecv(C);Retransmissions(C);ResponseTime1(C);"
)


def _stat_row(created: int, ok: int, failed: int, retrans: int = 0, timeouts: int = 0, current: int = 0) -> str:
    return (
        f"2026-11-28\t15:34:14.358627\t1795880054.358627;2026-11-28\t15:34:31.035087\t1795880071.035087;"
        f"{created};{current};0;{ok};0;{failed};0;{retrans};0;{timeouts};{retrans};00:00:00:004000;"
    )


def test_the_last_row_of_sipps_statistics_gives_the_calls_and_why_they_failed() -> None:
    rows = [_stat_row(10, 9, 0, current=40), _stat_row(60, 9, 0, current=50), _stat_row(100, 97, 3, 2, timeouts=3)]
    stats = sipp_statistics("\n".join([STAT_HEADER, *rows, ""]))
    assert stats == {
        "calls_at_once": 50,
        "attempted": 100,
        "answered": 97,
        "failed": 3,
        "failed_because": {"MaxUDPRetrans": 2, "TimeoutOnRecv": 3},
        "retransmissions": 2,
    }


def test_statistics_without_a_data_row_are_refused() -> None:
    with pytest.raises(ValueError, match="no data row"):
        sipp_statistics(STAT_HEADER + "\n")


def test_response_times_are_read_from_every_row_of_the_rtt_trace() -> None:
    text = "Date_ms;response_time_ms;rtd_no\n336.001;3;1\n668.001;12.5;1\nbroken\n"
    assert response_times_ms(text) == [3.0, 12.5]


def test_the_setting_overrides_only_what_it_names() -> None:
    assert plan_from(None) == CallsPlan()
    assert plan_from("rounds=4, rate=2.5") == CallsPlan(rounds=4, calls=150, concurrent=100, rate=2.5)


@pytest.mark.parametrize("setting", ["calls", "speed=3", "concurrent=0", "rounds=-1"])
def test_a_bad_setting_is_refused_with_what_it_accepts(setting: str) -> None:
    with pytest.raises(ValueError, match="BENCH_CALLS"):
        plan_from(setting)


def _stream(packets: int, start_ns: int = 0, spacing_ns: int = 20_000_000, wobble_ns: int = 0) -> list[tuple[int, int]]:
    # 20 ms of G.711 per packet: 160 timestamp units; every other packet `wobble_ns` late.
    return [(i * 160, start_ns + i * spacing_ns + (wobble_ns if i % 2 else 0)) for i in range(packets)]


def test_a_steady_stream_has_no_jitter_and_a_wobbling_one_has() -> None:
    assert interarrival_jitter_ms(_stream(50), CLOCK_RATE) == 0.0
    # |D| = 1 ms for every pair: the estimate climbs towards 1 ms.
    assert 0.9 < interarrival_jitter_ms(_stream(200, wobble_ns=1_000_000), CLOCK_RATE) <= 1.0


def test_a_port_handed_to_a_later_call_is_split_at_the_pause_between_them() -> None:
    first, second = _stream(10), _stream(10, start_ns=2_000_000_000)
    assert split_calls(first + second) == [first, second]
    assert split_calls([]) == []


def test_peak_overlap_counts_the_calls_whose_media_flowed_at_once() -> None:
    assert peak_overlap([(0, 10), (5, 15), (8, 9), (20, 30)]) == 3
    assert peak_overlap([]) == 0


def test_loss_is_counted_each_way_and_jitter_per_stream_either_way() -> None:
    caller, callee = 6000, 7000
    sent = {caller: 100, callee: 95}
    received = {
        # Two calls, each through its own relay ports; each leg receives the other's recording.
        (callee, 30000): _stream(50),
        (callee, 30004): _stream(48),
        (caller, 30002): _stream(47),
        (caller, 30006): _stream(46, wobble_ns=1_000_000),
    }
    rtp = rtp_summary(sent, {callee: 98, caller: 93}, received, caller, callee)
    assert rtp["relayed_to_callee"] == 98
    assert rtp["lost_to_callee"] == 2
    assert rtp["relayed_to_caller"] == 93
    assert rtp["lost_to_caller"] == 2
    assert rtp["streams"] == 4
    assert rtp["streams_at_once"] == 4
    assert rtp["jitter_ms_max"] == pytest.approx(interarrival_jitter_ms(_stream(46, wobble_ns=1_000_000), CLOCK_RATE))
    assert rtp["jitter_ms_mean"] == pytest.approx(rtp["jitter_ms_max"] / 4)


def test_nothing_relayed_is_all_lost_and_has_no_jitter() -> None:
    rtp = rtp_summary({1: 10, 2: 0}, {}, {}, caller=1, callee=2)
    assert rtp["lost_to_callee"] == 10
    assert rtp["lost_to_caller"] == 0
    assert rtp["jitter_ms_mean"] is None
    assert rtp["jitter_ms_p95"] is None


def _round(
    answered: int, failed: int, setups: list[float], lost: int, jitter: float, streams: int
) -> dict[str, object]:
    return {
        "sipp": {"attempted": answered + failed, "answered": answered, "failed": failed, "retransmissions": 0},
        "setup_ms": setups,
        "rtp": {
            "sent_by_caller": 100,
            "lost_to_callee": lost,
            "sent_by_callee": 100 - lost,
            "lost_to_caller": 0,
            "streams": streams,
            "jitter_ms_mean": jitter,
            "jitter_ms_max": jitter * 2,
        },
        "counter_drops": 0,
    }


def test_rounds_are_pooled_into_one_run_per_kind() -> None:
    run = pooled(
        "unmanaged",
        [_round(10, 0, [1.0, 2.0, 3.0], 0, 0.2, 10), _round(8, 2, [4.0, 50.0], 5, 0.8, 30)],
    )
    assert (run["attempted"], run["answered"], run["failed"]) == (20, 18, 2)
    assert run["setup_ms_p50"] == 3.0
    assert run["setup_ms_p95"] == 50.0
    assert run["setup_ms_max"] == 50.0
    assert run["rtp_lost"] == 5
    assert run["sent_by_caller"] == 200
    # Weighted by the number of streams in each round.
    assert run["jitter_ms_mean"] == pytest.approx((0.2 * 10 + 0.8 * 30) / 40)
    assert run["jitter_ms_max"] == 1.6
    assert run["rounds"] == 2
