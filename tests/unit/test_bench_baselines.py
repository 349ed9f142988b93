"""The benchmark's fairness rules and raw-result files, from plain values."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from bench.baselines import check_like_with_like, rotated
from bench.common import results_path


def test_rotation_puts_every_kind_in_every_position_once() -> None:
    kinds = ("floor", "managed", "unmanaged", "hand-made")
    orders = [rotated(kinds, r) for r in range(len(kinds))]
    for position in range(len(kinds)):
        assert sorted(order[position] for order in orders) == sorted(kinds)
    assert rotated(kinds, len(kinds)) == kinds


def _setup(budget: int | None, **changed: Any) -> dict[str, Any]:
    base = {
        "published_ports": ["2223/udp", "30000/udp"],
        "healthcheck": {"Test": ["CMD", "/bin/bash", "-c", "true"], "Interval": 5},
        "cap_add": ["SYS_NICE"],
        "tmpfs": {"/run": ""},
        "binds": ["/sys/fs/cgroup:/sys/fs/cgroup:ro"],
        "sysctls": {},
        "stop_signal": "SIGRTMIN+3",
        "image": "docker-xms/rtpengine:latest",
        "server_files": {"/etc/rtpengine/rtpengine.conf": "port-min = 30000"},
        "budget_us": budget,
    }
    return {**base, **changed}


def test_kinds_set_up_alike_but_for_the_budget_pass() -> None:
    check_like_with_like({"managed": _setup(237500), "unmanaged": _setup(None), "hand-made": _setup(237500)})


def test_a_missing_healthcheck_or_port_is_refused() -> None:
    with pytest.raises(RuntimeError, match="unmanaged container is not set up like the managed one: healthcheck"):
        check_like_with_like({"managed": _setup(1000), "unmanaged": _setup(None, healthcheck={})})
    with pytest.raises(RuntimeError, match="published_ports"):
        check_like_with_like({"managed": _setup(1000), "hand-made": _setup(1000, published_ports=["2223/udp"])})


def test_a_hand_made_budget_other_than_the_managed_share_is_refused() -> None:
    with pytest.raises(RuntimeError, match="budgets differ"):
        check_like_with_like({"managed": _setup(237500), "hand-made": _setup(475000)})


def test_raw_results_are_dated_and_never_overwritten(tmp_path: Path) -> None:
    started = time.strptime("2026-11-28 15:30", "%Y-%m-%d %H:%M")
    first = results_path(started, ["media"], tmp_path)
    assert first.name == "2026-11-28T1530-media.json"
    first.write_text("{}")
    again = results_path(started, ["media"], tmp_path)
    assert again.name == "2026-11-28T1530-media-2.json"
