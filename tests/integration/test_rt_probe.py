"""`rt probe` and `rt verify` inside a managed container, as a user runs them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.engine


def test_probe_runs_at_the_profiles_priority_and_verify_lists_real_time_threads(
    docker_client: Any, rtpengine_image: str
) -> None:
    name = "rtp-probe-1"
    started = run_cli("run", "-c", "--name", name, "--json")
    assert started.code == 0, started.err
    try:
        probe = run_cli("rt", "probe", name, "--seconds", "2", "--json")
        assert probe.code == 0, probe.err
        result = json.loads(probe.out)
        assert result["policy"] == "SCHED_FIFO"
        assert result["priority"] == 50
        assert result["samples"] >= 1500
        assert 0 <= result["p50_us"] <= result["p99_us"] <= result["p999_us"] <= result["max_us"]
        print(f"rt probe, 2 s at SCHED_FIFO 50: {result}")

        verify = run_cli("rt", "verify", name, "--json")
        assert verify.code == 0, verify.err
        proof = json.loads(verify.out)
        assert proof["ok"] is True
        assert proof["fifo_allowed"] is True
        workers = [t for t in proof["rt_threads"] if t["comm"] == "poller"]
        assert workers
        assert all(t["policy"] == "SCHED_FIFO" and t["priority"] == 50 for t in workers)
        assert all(t["cgroup_runtime_us"] == proof["budget_us"] for t in proof["rt_threads"])
    finally:
        run_cli("rm", "-f", name)


def test_verify_fails_without_a_budget(docker_client: Any, rtpengine_image: str) -> None:
    container = docker_client.containers.run(
        rtpengine_image,
        detach=True,
        name="rtp-probe-plain",
        cap_add=["SYS_NICE"],
        tmpfs={"/run": "", "/run/lock": ""},
        volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"}},
        labels={"io.docker-xms.test": "probe"},
    )
    try:
        verify = run_cli("rt", "verify", container.name, "--json")
        assert verify.code == 1
        proof = json.loads(verify.out)
        assert proof["fifo_allowed"] is False
        assert proof["rt_threads"] == []
        probe = run_cli("rt", "probe", container.name, "--seconds", "1", "--tool", "probe")
        assert probe.code == 1
        assert "refused SCHED_FIFO" in probe.err
    finally:
        container.remove(force=True)


def test_the_host_probe_is_the_floor_at_the_same_priority() -> None:
    probe = run_cli("rt", "probe", "--host", "--seconds", "1", "--json")
    assert probe.code == 0, probe.err
    result = json.loads(probe.out)
    assert result["target"] == "host"
    assert (result["policy"], result["priority"], result["samples"]) == ("SCHED_FIFO", 50, 1000)
    assert 0 <= result["p50_us"] <= result["p99_us"] <= result["p999_us"] <= result["max_us"]
    assert result["steal_ms"] is not None
    assert result["steal_ms"] >= 0
    print(f"rt probe --host, 1 s at SCHED_FIFO 50: {result}")


def test_a_probe_needs_one_target() -> None:
    for args in ((), ("some-container", "--host")):
        probe = run_cli("rt", "probe", *args, "--seconds", "1")
        assert probe.code == 2
        assert "Name a container to probe, or give --host" in probe.err
    cyclictest = run_cli("rt", "probe", "--host", "--tool", "cyclictest", "--seconds", "1")
    assert cyclictest.code == 2
    assert "--tool cyclictest applies to containers only" in cyclictest.err
