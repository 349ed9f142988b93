"""CPU-set mode on the real engine and kernel (cgroup v1, this machine's 2 CPUs): `rt_mode = cpus` keeps CPU 0
for the host and gives CPU 1 to the media containers, shared or refused as `cpus_when_short` says, with each
container's budget its CPUs' share of the pool; removal gives a CPU back, and the agent mends a CPU set
changed by hand.

On an engine of the tests' own (tests/private_engine.py), so that the host engine's containers (the README's
demo among them) keep the CPUs they have: switching a host to CPU-set mode is its operator's choice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docker_xms.adapters.cgroups import online_cpus
from docker_xms.domain.cpusets import format_cpu_list
from tests.helpers import Result, agent_for_a_test, wait_for
from tests.integration.test_agent import AgentProcess
from tests.private_engine import CGROUP_PARENT, PrivateEngine, emptied_client, private_engine

pytestmark = [pytest.mark.engine, pytest.mark.slow]

# Every CPU but the last for the host: one media CPU, so that a second container shares it (on this kind of
# machine, 2 CPUs: housekeeping 0, media 1).
ONLINE = online_cpus()
MEDIA = str(ONLINE[-1])
HOUSEKEEPING = format_cpu_list(ONLINE[:-1])
CPUS = {"DOCKER_XMS_RT_MODE": "cpus", "DOCKER_XMS_HOUSEKEEPING_CPUS": str(len(ONLINE) - 1)}
CPUSET_ROOT = Path("/sys/fs/cgroup/cpuset")
CPU_ROOT = Path("/sys/fs/cgroup/cpu")
PREFIX = "cpus-"


@pytest.fixture(scope="module")
def private(docker_client: Any, rtpengine_image: str) -> Iterator[PrivateEngine]:
    if len(ONLINE) < 2:
        pytest.skip("CPU-set mode needs a CPU beside the housekeeping one; this machine has one")
    with private_engine(docker_client, [rtpengine_image], pytest.skip) as engine:
        yield engine


@pytest.fixture
def client(private: PrivateEngine) -> Iterator[Any]:
    with emptied_client(private, CPUS) as c:
        yield c


def start(engine: PrivateEngine, name: str, env: dict[str, str] = CPUS) -> Result:
    return engine.cli("run", "-c", "--no-wait", "--json", "--name", PREFIX + name, "--media-ports", "10", env=env)


def cpuset(container_id: str) -> str:
    return (CPUSET_ROOT / CGROUP_PARENT.lstrip("/") / container_id / "cpuset.cpus").read_text().strip()


def budget(container_id: str) -> int:
    return int((CPU_ROOT / CGROUP_PARENT.lstrip("/") / container_id / "cpu.rt_runtime_us").read_text())


def status(engine: PrivateEngine) -> dict[str, Any]:
    done = engine.cli("rt", "status", "--json", env=CPUS)
    assert done.code == 0, done.err
    return dict(json.loads(done.out))


def test_media_containers_get_the_media_cpu_shared_or_refused_and_removal_gives_it_back(
    private: PrivateEngine, client: Any
) -> None:
    first = start(private, "a")
    assert first.code == 0, first.err
    a = json.loads(first.out)
    assert a["cpus"] == MEDIA
    assert cpuset(a["id"]) == MEDIA
    state = status(private)
    assert (state["mode"], state["housekeeping_cpus"], state["media_cpus"]) == ("cpus", HOUSEKEEPING, MEDIA)
    pool = state["pool_us"]
    assert budget(a["id"]) == pool

    second = start(private, "b")
    assert second.code == 0, second.err
    b = json.loads(second.out)
    # One media CPU: the second shares it, and the CPU's share of the pool is split.
    assert (cpuset(a["id"]), cpuset(b["id"])) == (MEDIA, MEDIA)
    assert budget(a["id"]) == budget(b["id"]) == pool // 2
    assert {h["name"]: h["cpus"] for h in status(private)["managed"]} == {PREFIX + "a": MEDIA, PREFIX + "b": MEDIA}

    refused = start(private, "c", env={**CPUS, "DOCKER_XMS_CPUS_WHEN_SHORT": "refuse"})
    assert refused.code == 2, refused.err + refused.out
    assert "cpus_when_short is refuse" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert PREFIX + "c" not in {c.name for c in client.containers.list(all=True)}
    assert budget(a["id"]) == budget(b["id"]) == pool // 2

    removed = private.cli("rm", "-f", PREFIX + "b", env=CPUS)
    assert removed.code == 0, removed.err
    assert cpuset(a["id"]) == MEDIA
    assert budget(a["id"]) == pool


def test_the_agent_mends_a_cpu_set_changed_by_hand(private: PrivateEngine, client: Any) -> None:
    started = start(private, "m")
    assert started.code == 0, started.err
    cid = json.loads(started.out)["id"]
    assert cpuset(cid) == MEDIA
    agent = AgentProcess(30, wrap=private.in_netns([]), env={**private.env(), **CPUS})
    with agent_for_a_test(agent) as running:
        wait_for(lambda: "agent started" in running.log(), 30, 0.1, "the agent to start")
        client.containers.get(cid).update(cpuset_cpus="0")  # a housekeeping CPU
        # The engine's "update" event wakes the agent (its periodic pass is 30 s away); it logs the change once
        # it has made it.
        mended = f"cpus {PREFIX}m 0 -> {MEDIA}"
        wait_for(lambda: mended in running.log(), 10, 0.1, "the agent to give the container its media CPU back")
        assert cpuset(cid) == MEDIA
