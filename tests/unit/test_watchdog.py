"""The runaway watchdog (RLIMIT_RTTIME) from a profile to the engine, the files and `rt status`; the fair
server's reserve as the kernel's debugfs shows it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from docker_xms.adapters.cgroups import fair_server_reserve, parse_rttime, rttime_soft_us
from docker_xms.adapters.engine import _container_info, sdk_arguments
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain.compose import ComposeOptions, compose_file
from docker_xms.domain.doctor import fair_server_findings
from docker_xms.domain.engine_types import CreateSpec
from docker_xms.domain.profiles import parse_profile
from docker_xms.domain.watchdog import (
    DEFAULT_WATCHDOG_MS,
    RtTimeLimit,
    fair_server_text,
    rttime_limit,
    watchdog_text,
)
from docker_xms.errors import BadInput

HEAD = '[profile]\nname = "w"\nimage = "x:1"\n'


def test_the_soft_limit_is_the_watchdog_and_sigkill_follows_at_twice_it() -> None:
    assert rttime_limit(500) == RtTimeLimit(500_000, 1_000_000)
    assert rttime_limit(0) is None
    assert watchdog_text(500_000) == "500 ms"
    assert watchdog_text(0) == "off"


def test_a_profile_sets_its_watchdog_or_gets_the_default_and_a_bad_one_is_refused() -> None:
    assert parse_profile(HEAD, "w.toml").watchdog_ms == DEFAULT_WATCHDOG_MS
    assert parse_profile(HEAD + "[realtime]\nwatchdog_ms = 0\n", "w.toml").watchdog_ms == 0
    assert parse_profile(HEAD + "[realtime]\nwatchdog_ms = 250\n", "w.toml").watchdog_ms == 250
    for bad in ("watchdog_ms = -1", "watchdog_ms = 60001", 'watchdog_ms = "1s"', "watchdog = 5"):
        with pytest.raises(BadInput, match=r"w\.toml"):
            parse_profile(HEAD + f"[realtime]\n{bad}\n", "w.toml")
    for name in ("rtpengine", "sip", "janus", "xms"):
        assert load_profile(name).watchdog_ms == 500


def test_the_engine_gets_the_rttime_ulimit_and_reads_it_back() -> None:
    spec = CreateSpec("x:1", rttime_us=(500_000, 1_000_000), rtprio=99)
    assert sdk_arguments(spec)["ulimits"] == [
        {"name": "rtprio", "soft": 99, "hard": 99},
        {"name": "rttime", "soft": 500_000, "hard": 1_000_000},
    ]
    assert "ulimits" not in sdk_arguments(CreateSpec("x:1"))
    attrs = {"Id": "a" * 64, "HostConfig": {"Ulimits": [{"Name": "nofile", "Soft": 9, "Hard": 9}]}}
    assert _container_info(attrs).rttime_us == 0
    attrs["HostConfig"] = {"Ulimits": [{"Name": "rttime", "Soft": 500_000, "Hard": 1_000_000}]}
    assert _container_info(attrs).rttime_us == 500_000
    # Podman names it by the kernel's name.
    attrs["HostConfig"] = {"Ulimits": [{"Name": "RLIMIT_RTTIME", "Soft": 500_000, "Hard": 1_000_000}]}
    assert _container_info(attrs).rttime_us == 500_000
    # What a container's inspect view says is bounded: a value that is no number counts as none.
    attrs["HostConfig"] = {"Ulimits": [{"Name": "rttime", "Soft": "lots"}, "junk"]}
    assert _container_info(attrs).rttime_us == 0


def test_compose_and_stack_files_carry_the_watchdog() -> None:
    profile = load_profile("rtpengine")
    for target in ("compose", "stack"):
        service = compose_file(profile, ComposeOptions(target=target))["services"]["rtpengine"]  # type: ignore[arg-type]
        assert service["ulimits"] == {"rttime": {"soft": 500_000, "hard": 1_000_000}}
    v2 = compose_file(profile, ComposeOptions(cgroup_version=2))["services"]["rtpengine"]
    assert v2["ulimits"] == {"rttime": {"soft": 500_000, "hard": 1_000_000}, "rtprio": 99}


def test_the_fair_servers_reserve_is_read_per_cpu_where_debugfs_shows_it(tmp_path: Path) -> None:
    assert fair_server_reserve(tmp_path) == {}
    base = tmp_path / "kernel/debug/sched/fair_server"
    for cpu, ns in ((1, 50_000_000), (0, 50_000_000)):
        (base / f"cpu{cpu}").mkdir(parents=True)
        (base / f"cpu{cpu}" / "runtime").write_text(f"{ns}\n")
    (base / "cpuX").mkdir()
    assert fair_server_reserve(tmp_path) == {0: 50_000_000, 1: 50_000_000}
    assert fair_server_text({0: 50_000_000, 1: 50_000_000}) == "50 ms per period on CPU 0-1"
    assert fair_server_text({0: 50_000_000}) == "50 ms per period on CPU 0"
    assert fair_server_text({0: 50_000_000, 1: 20_000_000}) == "CPU 0 50 ms, CPU 1 20 ms"


def test_the_kernels_rttime_limit_is_read_from_a_processs_limits() -> None:
    head = "Limit                     Soft Limit           Hard Limit           Units     \n"
    assert (
        parse_rttime(head + "Max realtime timeout      500000               1000000              us        \n")
        == 500_000
    )
    assert parse_rttime(head + "Max realtime timeout      unlimited            unlimited            us        \n") == 0
    assert parse_rttime(head) is None
    assert parse_rttime(head + "Max realtime timeout      lots\n") is None
    assert rttime_soft_us(os.getpid()) is not None
    assert rttime_soft_us(999_999_999) is None


def test_the_doctor_names_the_fair_servers_reserve_where_the_kernel_shows_it() -> None:
    assert fair_server_findings({}) == []
    (finding,) = fair_server_findings({0: 50_000_000, 1: 50_000_000})
    assert finding.level == "ok"
    assert "50 ms per period on CPU 0-1" in finding.message
