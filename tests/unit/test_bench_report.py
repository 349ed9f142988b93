"""The benchmark's verdicts, from plain result values."""

from __future__ import annotations

from typing import Any

from bench.report import latency_headlines, media_headlines


def _lat_run(n: int, load: str, kind: str, p999: float) -> dict[str, Any]:
    return {"n": n, "load": load, "kind": kind, "pooled": {"p999_us": p999}}


def _lat(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"loads": {"idle": "", "host": "", "inside": ""}, "runs": runs}


def _one_line(n: int, load: str, floor: float, managed: float, unmanaged: float) -> str:
    kinds = {"floor": floor, "managed": managed, "unmanaged": unmanaged}
    (line,) = latency_headlines(_lat([_lat_run(n, load, kind, p999) for kind, p999 in kinds.items()]))
    return line


def test_latency_target_met_when_within_100_us_and_20x() -> None:
    line = _one_line(1, "host", floor=40, managed=80, unmanaged=2000)
    assert "managed 80 us vs unmanaged 2000 us = 25.0x" in line
    assert "met)" in line
    assert "NOT met" not in line
    assert "the host itself, same probe and priority: 40 us" in line


def test_latency_target_missed_names_a_floor_above_the_target() -> None:
    line = _one_line(2, "inside", floor=180, managed=150, unmanaged=4500)
    assert "load inside, N=2" in line
    assert "30.0x" in line
    assert "NOT met" in line
    assert "(itself above the target)" in line


def test_latency_ratio_alone_does_not_meet_the_target() -> None:
    lat = _lat([_lat_run(1, "host", "managed", 90), _lat_run(1, "host", "unmanaged", 900)])
    (line,) = latency_headlines(lat)
    assert "10.0x" in line
    assert "NOT met" in line
    assert "host itself" not in line


def test_idle_rows_give_no_latency_verdict() -> None:
    lat = _lat([_lat_run(1, "idle", "managed", 500), _lat_run(1, "idle", "unmanaged", 600)])
    assert latency_headlines(lat) == []


def _media_run(kind: str, load: str, relay: float, direct: float) -> dict[str, Any]:
    return {
        "kind": kind,
        "load": load,
        "tool": "SCHED_FIFO 70",
        "relay": {"jitter_ms": relay, "lost": 0, "late": 0},
        "direct": {"jitter_ms": direct},
        "added_jitter_ms": relay - direct,
    }


def test_media_verdict_on_added_jitter_and_the_ratio() -> None:
    media = {
        "loads": {"idle": "", "inside": ""},
        "runs": [
            _media_run("managed", "idle", 0.02, 0.01),
            _media_run("unmanaged", "idle", 0.02, 0.01),
            _media_run("managed", "inside", 0.05, 0.01),
            _media_run("unmanaged", "inside", 2.0, 0.01),
        ],
    }
    lines = media_headlines(media)
    idle = [line for line in lines if "load idle" in line]
    assert idle
    assert not any("target" in line for line in idle)
    (managed,) = [line for line in lines if "load inside, managed" in line]
    assert "+0.040 ms" in managed
    assert "met)" in managed
    assert "NOT" not in managed
    (ratio,) = [line for line in lines if "unmanaged / managed" in line]
    assert "load inside" in ratio
    assert "40.0x" in ratio


def test_latency_headline_names_the_hand_made_baseline_beside_managed() -> None:
    lat = _lat(
        [
            _lat_run(1, "host", "managed", 80),
            _lat_run(1, "host", "unmanaged", 2000),
            _lat_run(1, "host", "hand-made", 88),
        ]
    )
    (line,) = latency_headlines(lat)
    assert "managed 80 us vs unmanaged 2000 us = 25.0x" in line
    assert "hand-made (plain docker run, same budget) 88 us = 1.10x managed" in line


def test_media_ratio_line_includes_the_hand_made_baseline() -> None:
    media = {
        "loads": {"inside": ""},
        "runs": [
            _media_run("managed", "inside", 0.05, 0.01),
            _media_run("unmanaged", "inside", 2.0, 0.01),
            _media_run("hand-made", "inside", 0.06, 0.01),
        ],
    }
    lines = media_headlines(media)
    (hand,) = [line for line in lines if "load inside, hand-made" in line]
    assert "+0.050 ms" in hand
    assert "target" not in hand
    (ratio,) = [line for line in lines if "/ managed" in line]
    assert "unmanaged / managed = 40.0x" in ratio
    assert "hand-made / managed = 1.2x" in ratio
