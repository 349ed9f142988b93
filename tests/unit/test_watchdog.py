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
    JOURNAL_QUERY,
    RtTimeLimit,
    WatchdogStop,
    engine_time,
    fair_server_text,
    rttime_limit,
    stops_text,
    watchdog_stops,
    watchdog_text,
)
from docker_xms.errors import BadInput
from docker_xms.usecases.images import Quiet
from docker_xms.usecases.rt import read_state
from docker_xms.usecases.run import RunRequest, run
from tests.fakes import booted
from tests.unit.usecase_host import IMAGE, make_host

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


# As systemd 252 in a container logs a stop by the watchdog (`journalctl -o short-unix`), read on this machine.
STOP = "1796670724.636843 d16c36952b9e systemd[1]: spin1.service: Main process exited, code=killed, status=24/XCPU"


def test_the_watchdogs_stops_are_read_from_systemds_lines_and_nothing_else() -> None:
    journal = "\n".join(
        [
            STOP.replace("1796670724.636843", "1796670730.5").replace("spin1", "rtpengine-daemon"),
            STOP,
            # What the container could print to look like one: another process's line, a unit name with a space.
            "1796670731.0 h sh[7]: x.service: Main process exited, code=killed, status=24/XCPU",
            "1796670732.0 h systemd[1]: a b: Main process exited, code=killed, status=24/XCPU",
            "1796670733.0 h systemd[1]: y.service: Main process exited, code=killed, status=9/KILL",
            "x" * 100_000,
        ]
    )
    assert watchdog_stops(journal) == [
        WatchdogStop("spin1.service", 1796670724.636843),
        WatchdogStop("rtpengine-daemon.service", 1796670730.5),
    ]
    assert (stops_text(0), stops_text(1), stops_text(3)) == ("", ", 1 stop", ", 3 stops")
    # The query asks for the kernel's signal only, and at most a few lines.
    assert "status=24/XCPU" in JOURNAL_QUERY
    assert "tail -n 20" in JOURNAL_QUERY


def test_an_engines_timestamp_is_read_to_the_microsecond_and_a_bad_one_is_none() -> None:
    assert engine_time("2026-12-07T18:00:00.500000000Z") == 1796666400.5
    assert engine_time("2026-12-07T19:00:00+01:00") == 1796666400.0
    assert engine_time("0001-01-01T00:00:00Z") is not None
    assert engine_time("") is None
    assert engine_time("yesterday") is None


def test_rt_status_counts_the_stops_since_the_container_started(tmp_path: Path) -> None:
    host = make_host(tmp_path, cgroup_version=2)
    cid = run(host.given, RunRequest(image=IMAGE, container_address=True, name="spun", wait=False), Quiet()).id
    before_start = STOP.replace("1796670724.636843", "1796666399.0")
    # A container's journal can claim any time: one far ahead of this host's clock is not taken.
    future = STOP.replace("1796670724.636843", "4102444800.0")

    def answer(cmd: list[str]) -> tuple[int, str]:
        if cmd[:2] == ["sh", "-c"] and cmd[2] == JOURNAL_QUERY:
            assert cmd[4] == "1796666400"  # since the container started
            return 0, "\n".join([before_start, STOP, STOP.replace("spin1", "spin2"), future]) + "\n"
        return booted(cmd)

    host.engine.answer = answer
    (row,) = read_state(host.rt).managed
    assert (row.id, row.watchdog_us, row.watchdog_stops) == (cid, 500_000, 2)
