"""Real-time budgets against the real kernel: fair shares, foreign holders, concurrency."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from docker_xms.adapters.engine import Engine
from docker_xms.errors import StartBudgetRefused
from tests.helpers import (
    TEST_LABEL,
    children_runtime,
    cli_path,
    parent_runtime,
    run_cli,
    runtime_of,
)
from tests.host_state import fair_shares, foreign_runtime, kernel_pool, running_managed

pytestmark = pytest.mark.engine

PREFIX = "rtb-"


def _status() -> dict[str, Any]:
    result = run_cli("rt", "status", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def _start(name: str, *extra: str) -> str:
    result = run_cli("run", "-c", "--no-wait", "--media-ports", "10", "--name", name, "--json", *extra)
    assert result.code == 0, result.err
    return str(json.loads(result.out)["id"])


@pytest.fixture
def cleanup(docker_client: Any) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        run_cli("rm", "-f", name)
    for c in docker_client.containers.list(all=True):
        if c.name.startswith(PREFIX):
            c.remove(force=True)
    run_cli("rt", "rebalance")


def _fifo_works(docker_client: Any, container_id: str) -> bool:
    code, _ = docker_client.containers.get(container_id).exec_run(["chrt", "--fifo", "1", "true"])
    return code == 0


def _right(docker_client: Any, ids: list[str]) -> None:
    """Each of `ids` holds its share by the kernel's rule, and the engine stores the same value."""
    shares = fair_shares(docker_client)
    assert {i: runtime_of(i) for i in ids} == {i: shares[i] for i in ids}
    for i in ids:
        assert docker_client.api.inspect_container(i)["HostConfig"]["CpuRealtimeRuntime"] == shares[i]
    assert parent_runtime() == kernel_pool(docker_client) + foreign_runtime(docker_client)
    assert children_runtime() <= parent_runtime()


def test_fair_shares_for_1_to_8_containers(docker_client: Any, rtpengine_image: str, cleanup: list[str]) -> None:
    others = len(running_managed(docker_client))
    assert kernel_pool(docker_client) > 0
    ids: list[str] = []
    for n in range(1, 9):
        name = f"{PREFIX}{n}"
        cleanup.append(name)
        ids.append(_start(name))
        _right(docker_client, ids)
        if not others:
            assert runtime_of(ids[0]) == kernel_pool(docker_client) // n, f"N={n}"
    assert all(_fifo_works(docker_client, i) for i in ids)
    # Removing one gives its share back to the others, and the engine's stored value follows, so a
    # restart re-applies the right budget.
    before = runtime_of(ids[0])
    result = run_cli("rm", "-f", f"{PREFIX}8")
    assert result.code == 0, result.err
    _right(docker_client, ids[:7])
    assert runtime_of(ids[0]) > before


def test_weights_share_in_proportion(docker_client: Any, rtpengine_image: str, cleanup: list[str]) -> None:
    cleanup += [f"{PREFIX}w1", f"{PREFIX}w2"]
    light = _start(f"{PREFIX}w1")
    heavy = _start(f"{PREFIX}w2", "--rt-weight", "2")
    _right(docker_client, [light, heavy])
    pool, total = kernel_pool(docker_client), sum(running_managed(docker_client).values())
    assert runtime_of(light) == pool // total
    assert runtime_of(heavy) == pool * 2 // total


def test_foreign_container_keeps_its_budget(docker_client: Any, rtpengine_image: str, cleanup: list[str]) -> None:
    foreign_before = foreign_runtime(docker_client)
    if not _room_for(100000):
        # Other managed containers hold the whole pool: the kernel refuses a plain start with a budget
        # until a rebalance leaves room, and the suite does not shrink what it did not start.
        pytest.skip("real-time containers that these tests did not start hold the engine's whole parent")
    foreign = docker_client.containers.run(
        rtpengine_image,
        ["sleep", "300"],
        detach=True,
        name=f"{PREFIX}foreign",
        cpu_rt_runtime=100000,
        cap_add=["SYS_NICE"],
        labels={TEST_LABEL: "rt"},
    )
    cleanup.append(f"{PREFIX}m1")
    managed = _start(f"{PREFIX}m1")
    state = _status()
    assert state["foreign_us"] == foreign_before + 100000
    assert state["pool_us"] == kernel_pool(docker_client)
    assert runtime_of(foreign.id) == 100000
    _right(docker_client, [managed])
    assert f"{PREFIX}foreign" in [h["name"] for h in state["foreign"]]
    pool_with = kernel_pool(docker_client)
    foreign.remove(force=True)
    assert run_cli("rt", "rebalance").code == 0
    _right(docker_client, [managed])
    assert kernel_pool(docker_client) == pool_with + 100000


def _room_for(runtime_us: int) -> bool:
    return parent_runtime() - children_runtime() >= runtime_us


def test_concurrent_rebalances_end_exact(docker_client: Any, rtpengine_image: str, cleanup: list[str]) -> None:
    names = [f"{PREFIX}c{i}" for i in range(3)]
    cleanup += names
    ids = [_start(n) for n in names]
    # Knock the shares out of balance by hand, then let eight processes race to mend them.
    with open(f"/sys/fs/cgroup/cpu/docker/{ids[0]}/cpu.rt_runtime_us", "w") as fh:
        fh.write("100000")

    def rebalance(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cli_path(), "rt", "rebalance", "--json"], capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=8) as pool_exec:
        results = list(pool_exec.map(rebalance, range(8)))
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    _right(docker_client, ids)


def test_run_without_root_is_refused(docker_client: Any) -> None:
    before = {c.id for c in docker_client.containers.list(all=True)}
    # CAP_DAC_READ_SEARCH only lets an interpreter kept under /root (pyenv) be found and read: without it
    # the user could not even start docker-xms, and any "permission denied" would pass for the refusal.
    setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    setpriv += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    proc = subprocess.run(
        [*setpriv, cli_path(), "run", "-c", "--no-wait"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "NO_COLOR": "1", "COLUMNS": "200"},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "error: docker-xms must run as root: it writes real-time budgets into the host's cgroups.\n"
    assert {c.id for c in docker_client.containers.list(all=True)} == before


def test_the_engine_reports_a_budget_the_kernel_refused_at_start_as_a_start_retry_recognises(
    docker_client: Any, busybox_image: str
) -> None:
    """A start whose budget the kernel refuses is tried again (a group removed a moment ago may still
    count): the engine's own wording must be the one the engine adapter raises as the refusal
    `start_once_freed` tries again."""
    # More than the whole host's real-time runtime: refused whatever else runs.
    container = docker_client.api.create_container(
        busybox_image,
        ["/bin/busybox", "true"],
        name=f"{PREFIX}refused",
        labels={TEST_LABEL: "refused-start"},
        host_config=docker_client.api.create_host_config(cpu_rt_runtime=990_000),
    )
    engine = Engine.connect()
    try:
        with pytest.raises(StartBudgetRefused) as refused:
            engine.start(container["Id"])
        assert refused.value.message.startswith("The engine could not start the container: ")
    finally:
        engine.close()
        docker_client.api.remove_container(container["Id"], force=True)
