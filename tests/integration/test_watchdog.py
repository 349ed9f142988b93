"""The runaway watchdog on the real engine and kernel: a media container's processes run under the profile's
RLIMIT_RTTIME, a SCHED_FIFO thread that spins without blocking is stopped by the kernel (SIGXCPU) and
systemd inside starts it again; with the watchdog off the same spin keeps its CPU.

The spinner is a transient systemd service in the demo's container (`systemd-run`), standing in for a
media server's thread gone runaway: it inherits the limit as rtpengine-daemon does (checked too).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import docker_xms
from docker_xms.adapters.profile_store import load_profile
from tests.helpers import in_container, run_cli, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SPIN = "docker-xms-spin"
SPIN_COMMAND = ["chrt", "-f", "10", "/bin/sh", "-c", "while :; do :; done"]
PREFIX = "watchdog-"


@pytest.fixture
def names() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        run_cli("rm", "-f", name)


def start(name: str, env: dict[str, str] | None = None, profile: str = "rtpengine") -> dict[str, object]:
    done = run_cli("run", "-p", profile, "-c", "--name", name, "--json", env=env, timeout=300)
    assert done.code == 0, done.err
    summary = dict(json.loads(done.out))
    assert summary["ready"] is True, summary.get("ready_state")
    return summary


def unit(name: str, *props: str) -> dict[str, str]:
    shown = in_container(name, "systemctl", "show", SPIN, *(f"-p{p}" for p in props))
    return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)


def spin(name: str, restart_s: int) -> None:
    in_container(
        name, "systemd-run", "--unit", SPIN, "-p", "Restart=always", "-p", f"RestartSec={restart_s}", *SPIN_COMMAND
    )


def limits_of(name: str, pid: str) -> str:
    return next(
        line for line in in_container(name, "cat", f"/proc/{pid}/limits").splitlines() if "realtime timeout" in line
    )


def test_a_spinning_real_time_thread_is_stopped_within_the_watchdog_and_restarted_by_systemd(
    rtpengine_image: str, names: list[str]
) -> None:
    name = f"{PREFIX}{secrets.token_hex(3)}"
    names.append(name)
    summary = start(name)
    # The engine holds the limit (`rt status` reads it from the inspect view), and every process of the
    # container has it: the media server's too.
    status = json.loads(run_cli("rt", "status", "--json").out)
    (row,) = [h for h in status["managed"] if h["id"] == summary["id"]]
    assert row["watchdog_us"] == 500_000
    daemon = in_container(name, "systemctl", "show", "-pMainPID", "--value", "rtpengine-daemon.service").strip()
    assert limits_of(name, daemon).split()[3:6] == ["500000", "1000000", "us"]

    spin(name, restart_s=3)
    # The kernel stops the spin (SIGXCPU, 24) once it has run 500 ms without blocking; systemd restarts it.
    killed = wait_for(
        lambda: (
            (
                u := unit(
                    name,
                    "ExecMainStatus",
                    "ExecMainCode",
                    "SubState",
                    "ExecMainStartTimestampMonotonic",
                    "ExecMainExitTimestampMonotonic",
                )
            )["ExecMainStatus"]
            == "24"
            and u
        ),
        timeout=10,
        interval=0.1,
        what="the watchdog to stop the spinning thread",
    )
    ran_ms = (int(killed["ExecMainExitTimestampMonotonic"]) - int(killed["ExecMainStartTimestampMonotonic"])) / 1000
    print(f"spinning SCHED_FIFO thread stopped {ran_ms:.0f} ms after it started (watchdog 500 ms)")
    # 500 ms of CPU, spent within the container's budget (950 ms a second at most): at most one period more.
    assert 450 <= ran_ms <= 1600, ran_ms
    assert killed["ExecMainCode"] == "2"  # killed by a signal
    wait_for(lambda: int(unit(name, "NRestarts")["NRestarts"]) >= 1, timeout=15, what="systemd to restart it")
    in_container(name, "systemctl", "stop", SPIN)
    # docker-xms reads what systemd inside logged: `rt status` counts the stops since the container started,
    # and the agent's pass logs each one once.
    status = json.loads(run_cli("rt", "status", "--json").out)
    (row,) = [h for h in status["managed"] if h["id"] == summary["id"]]
    assert row["watchdog_stops"] >= 1, row
    passed = run_cli("agent", "--once")
    assert f"watchdog stopped {SPIN}.service in {name} (SIGXCPU" in passed.out + passed.err, passed.out + passed.err
    # The server itself is untouched: it blocks every packet time.
    assert in_container(name, "systemctl", "is-active", "rtpengine-daemon.service").strip() == "active"


def test_without_the_watchdog_the_spin_keeps_its_cpu(rtpengine_image: str, names: list[str], tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    copy = (Path(docker_xms.__file__).parent / "profiles" / "rtpengine.toml").read_text()
    assert load_profile("rtpengine").watchdog_ms == 500
    copy = copy.replace('name = "rtpengine"', 'name = "rtpengine-nowatchdog"', 1).replace(
        "watchdog_ms = 500", "watchdog_ms = 0", 1
    )
    (profiles / "rtpengine-nowatchdog.toml").write_text(copy)
    env = {"DOCKER_XMS_PROFILE_PATH": str(profiles)}
    name = f"{PREFIX}off-{secrets.token_hex(3)}"
    names.append(name)
    summary = start(name, env=env, profile="rtpengine-nowatchdog")
    status = json.loads(run_cli("rt", "status", "--json", env=env).out)
    (row,) = [h for h in status["managed"] if h["id"] == summary["id"]]
    assert row["watchdog_us"] == 0
    spin(name, restart_s=1)
    try:
        pid = wait_for(
            lambda: unit(name, "MainPID")["MainPID"] not in ("", "0") and unit(name, "MainPID")["MainPID"],
            timeout=10,
            what="the spin to start",
        )
        started = time.monotonic()
        time.sleep(2.0)
        stat = in_container(name, "cat", f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
        cpu_s = (int(stat[11]) + int(stat[12])) / 100
        wall_s = time.monotonic() - started
        print(f"without the watchdog: the spin ran {cpu_s:.2f} s of CPU and was never stopped")
        assert unit(name, "NRestarts")["NRestarts"] == "0"
        assert unit(name, "MainPID")["MainPID"] == pid
        assert limits_of(name, pid).split()[3] == "unlimited"
        # It held its CPU for as much as the container's budget lets it: far beyond the 500 ms watchdog.
        assert cpu_s >= 1.0, (cpu_s, wall_s)
    finally:
        in_container(name, "systemctl", "stop", SPIN)
