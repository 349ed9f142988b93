"""Engine restarts, on an engine of the tests' own: the agent mends budgets, rules and SCHED_FIFO after them.

Restarting the host's engine would stop every container on it that has no restart policy, so these
tests start a second engine (tests/private_engine.py: its own socket, data and exec roots, network
namespace, bridge and cgroup parent) and restart that one. Unrelated containers on the host engine (a
plain one, a managed one and one with a plain --cpu-rt-runtime) are made before and must be exactly
as they were after. When this host cannot give the tests an engine of their own, the tests are
skipped with the reason; the host's engine is never restarted instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from docker_xms.domain.labels import MANAGED_LABEL, forwards_from_labels
from tests import host_state
from tests.helpers import TEST_LABEL, agent_for_a_test, run_cli, wait_for
from tests.integration.test_agent import AgentProcess
from tests.private_engine import CPU_ROOT, PrivateEngine, emptied_client, host_room, private_engine

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.engine_restart]

PREFIX = "restart-test-"
BYSTANDER = "restart-bystander-"
PERIOD_US = 1_000_000
# Outside any test: start the engine's restarts, the agent in the netns and the CLI need this long.
MEND_S = 2.0


# --- the host engine's bystanders --------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    status: str
    started_at: str
    cgroup_budget: int | None
    stored_budget: int
    rules: tuple[str, ...]


def seen(client: Any, cid: str) -> Seen:
    attrs = client.api.inspect_container(cid)
    try:
        budget: int | None = int((CPU_ROOT / "docker" / cid / "cpu.rt_runtime_us").read_text())
    except OSError:
        budget = None
    return Seen(
        attrs["State"]["Status"],
        attrs["State"]["StartedAt"],
        budget,
        int(attrs["HostConfig"].get("CpuRealtimeRuntime") or 0),
        tuple(host_state.rule_lines(cid[:12])),
    )


def start_realtime_bystander(client: Any, image: str, command: list[str]) -> str:
    """A plain `docker run --cpu-rt-runtime=20000 --cap-add SYS_NICE` container on the host engine.

    It needs room in /docker, which the managed containers hold all of: as an administrator would, the
    pool is capped for one rebalance and the parent raised by hand by what that freed (under the host
    lock, so that an agent cannot take it back first); the next rebalance counts it as foreign.
    """
    parent = CPU_ROOT / "docker" / "cpu.rt_runtime_us"
    with host_room(20_000):
        parent.write_text(f"{int(parent.read_text()) + 20_000}\n")
        container = client.containers.run(
            image, command, detach=True, name=BYSTANDER + "rt", labels={TEST_LABEL: "bystander"},
            cpu_rt_runtime=20_000, cap_add=["SYS_NICE"],
        )  # fmt: skip
    return str(container.id)


@pytest.fixture(scope="module")
def bystanders(docker_client: Any, busybox_image: str, rtpengine_image: str) -> Iterator[dict[str, Seen]]:
    """Three containers on the host engine that the engine-restart tests must leave exactly as they are."""
    sleep = ["/bin/busybox", "sleep", "3600"]
    ids: dict[str, str] = {}
    try:
        plain = docker_client.containers.run(
            busybox_image, sleep, detach=True, name=BYSTANDER + "plain", labels={TEST_LABEL: "bystander"}
        )
        ids["plain"] = plain.id
        ids["rt"] = start_realtime_bystander(docker_client, busybox_image, sleep)
        managed = run_cli(
            "run", "-c", "--no-wait", "--json", "--name", BYSTANDER + "managed", "--media-ports", "10",
            "--ports", "dnat", env={"DOCKER_XMS_START_AGENT": "0"}, timeout=120,
        )  # fmt: skip
        assert managed.code == 0, managed.err + managed.out
        ids["managed"] = json.loads(managed.out)["id"]
        settled = run_cli("rt", "rebalance")
        assert settled.code == 0, settled.err
        before = {kind: seen(docker_client, cid) for kind, cid in ids.items()}
        assert before["rt"].cgroup_budget == 20_000, before
        assert before["managed"].rules, "the managed bystander has its DNAT rules"
        yield before
    finally:
        for cid in ids.values():
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.api.remove_container(cid, force=True)
        run_cli("rt", "rebalance")


@pytest.fixture(scope="module")
def private(bystanders: dict[str, Seen], docker_client: Any, rtpengine_image: str) -> Iterator[PrivateEngine]:
    with private_engine(docker_client, [rtpengine_image], pytest.skip) as engine:
        yield engine


# --- the private engine's state, by the kernel's rule --------------------------------------------------


def runtime(group: Path) -> int:
    return int((group / "cpu.rt_runtime_us").read_text())


def children(group: Path) -> dict[str, int]:
    out = {}
    for entry in group.iterdir():
        if entry.is_dir():
            with contextlib.suppress(OSError, ValueError):
                out[entry.name] = runtime(entry)
    return out


def expected(engine: PrivateEngine, client: Any) -> tuple[dict[str, int], int]:
    """Each running managed container's budget and the parent's, from the cgroup files and labels."""
    managed = {c.id: int(c.labels.get("io.docker-xms.rt-weight", "1")) for c in running_managed(client)}
    foreign = sum(v for name, v in children(engine.parent).items() if name not in managed)
    siblings = sum(v for name, v in children(CPU_ROOT).items() if name != engine.parent.name)
    pool = max(0, runtime(CPU_ROOT) - siblings - foreign)
    total = sum(managed.values())
    return {cid: pool * w // total for cid, w in managed.items()}, pool + foreign


def running_managed(client: Any) -> list[Any]:
    return list(client.containers.list(filters={"label": f"{MANAGED_LABEL}=true"}))


def budget_of(engine: PrivateEngine, cid: str) -> int | None:
    try:
        return runtime(engine.parent / cid)
    except OSError:
        return None


def mismatch(engine: PrivateEngine, client: Any) -> str | None:
    want, parent = expected(engine, client)
    wrong = {cid[:12]: (budget_of(engine, cid), v) for cid, v in want.items() if budget_of(engine, cid) != v}
    if runtime(engine.parent) != parent or wrong:
        return f"parent {runtime(engine.parent)} want {parent}; (have, want) {wrong}"
    return None


def rules_right(engine: PrivateEngine, client: Any) -> bool:
    """DNAT rules in the engine's namespace exactly for its running managed containers that ask for them."""
    owners = set(re.findall(r"docker-xms:([0-9a-f]{12}):", engine.iptables("-t", "nat", "-S", "DOCKER-XMS")))
    wanted = {c.id[:12] for c in running_managed(client) if forwards_from_labels(c.labels)}
    return owners == wanted


def fifo_works(client: Any, cid: str) -> bool:
    try:
        exec_id = client.api.exec_create(cid, ["chrt", "--fifo", "1", "true"])["Id"]
        client.api.exec_start(exec_id)
        return client.api.exec_inspect(exec_id)["ExitCode"] == 0
    except docker.errors.APIError:
        return False


def start(engine: PrivateEngine, name: str, dnat: bool = False) -> str:
    args = ["run", "-c", "--no-wait", "--json", "--name", PREFIX + name, "--media-ports", "10"]
    result = engine.cli(*args, *(["--ports", "dnat"] if dnat else []))
    assert result.code == 0, result.err + result.out
    return str(json.loads(result.out)["id"])


@pytest.fixture
def client(private: PrivateEngine) -> Iterator[Any]:
    with emptied_client(private) as c:
        yield c


@pytest.fixture
def agent(private: PrivateEngine) -> Iterator[AgentProcess]:
    with agent_for_a_test(AgentProcess(5, wrap=private.in_netns([]), env=private.env())) as process:
        yield process


def stop_engine(private: PrivateEngine, agent: AgentProcess) -> None:
    private.stop(signal.SIGTERM)
    wait_for(lambda: "engine connection lost" in agent.log(), 10, 0.05, "the agent to notice")
    # What a stopped engine leaves: none of its containers' cgroups.
    wait_for(lambda: not [p for p in private.parent.iterdir() if p.is_dir()], 30, 0.1, "containers' cgroups gone")


# --- the tests ------------------------------------------------------------------------------------------


def test_after_an_engine_restart_with_the_parent_at_0_budgets_rules_and_fifo_are_back_within_2_s(
    private: PrivateEngine, client: Any, agent: AgentProcess
) -> None:
    ids = [start(private, "r1", dnat=True), start(private, "r2")]
    for cid in ids:
        client.api.update_container(cid, restart_policy={"Name": "unless-stopped"})
    wait_for(lambda: mismatch(private, client) is None, 10, 0.02, "budgets")
    stopped_agent = False
    try:
        stop_engine(private, agent)
        # What a reboot leaves: the parent at 0.
        (private.parent / "cpu.rt_runtime_us").write_text("0\n")
        # While the engine is away the agent puts the parent right, so the engine's restarts can succeed.
        wait_for(lambda: runtime(private.parent) > 0, 3, 0.02, "the agent to raise the parent while the engine is down")
        # Now as if the agent had not been around when the engine came up: its restarts fail.
        agent.proc.send_signal(signal.SIGSTOP)
        stopped_agent = True
        (private.parent / "cpu.rt_runtime_us").write_text("0\n")
        private.start()
        private.wait_answers(90)
        back = time.monotonic()
        agent.proc.send_signal(signal.SIGCONT)
        stopped_agent = False
        failed = [
            client.api.inspect_container(cid)["State"]["Error"]
            for cid in ids
            if not client.api.inspect_container(cid)["State"]["Running"]
        ]

        def all_right() -> bool:
            states = [client.api.inspect_container(cid)["State"] for cid in ids]
            return (
                all(s["Running"] for s in states)
                and mismatch(private, client) is None
                and rules_right(private, client)
                and all(fifo_works(client, cid) for cid in ids)
            )

        wait_for(all_right, MEND_S, 0.02, "budgets, rules and SCHED_FIFO right after the engine came back")
        latency = time.monotonic() - back
        print(
            f"engine back to budgets, rules and SCHED_FIFO right: {latency:.3f} s; restarts it could not do: {failed}"
        )
        assert failed, "the engine restarted the containers although the parent held 0"
        assert all("cpu.rt_runtime_us" in e for e in failed), failed
        assert "engine back after" in agent.log()
        assert f"started {PREFIX}r1" in agent.log()
    finally:
        if stopped_agent:
            agent.proc.send_signal(signal.SIGCONT)
        if private.pid() is None:
            private.start()
        private.wait_answers(90)


def test_the_agent_outlives_the_engine_stopping_during_a_burst_and_mends_within_2_s_of_its_return(
    private: PrivateEngine, client: Any, agent: AgentProcess
) -> None:
    ids = [start(private, f"k{i}", dnat=i % 2 == 0) for i in range(4)]
    for cid in ids:
        client.api.update_container(cid, restart_policy={"Name": "unless-stopped"})
    wait_for(lambda: mismatch(private, client) is None, 10, 0.02, "budgets")
    lines_before = len(agent.lines)
    outcomes: list[str] = []

    def run_new(name: str) -> None:
        result = start_quietly(private, name)
        outcomes.append(f"run {name}: exit {result}")

    try:
        with ThreadPoolExecutor(5) as pool:
            # A burst: containers removed by hand and killed, new ones started, all at once ...
            pool.submit(client.api.remove_container, ids[0], force=True)
            pool.submit(os.kill, client.api.inspect_container(ids[1])["State"]["Pid"], signal.SIGKILL)
            pool.submit(run_new, "n0")
            pool.submit(run_new, "n1")
            # ... and the engine stopped while the agent reconciles it. The agent logs only what it changes:
            # when the runs' own rebalances have already made the budgets right it has nothing to say, and
            # the engine is stopped after 5 s all the same, with the agent following its events.
            deadline = time.monotonic() + 5
            while len(agent.lines) <= lines_before and time.monotonic() < deadline:
                time.sleep(0.005)
            stop_engine(private, agent)
        assert agent.proc.poll() is None, agent.log()
        down_s = 1.0
        time.sleep(down_s)
        assert agent.proc.poll() is None, agent.log()
        private.start()
        private.wait_answers(90)
        back = time.monotonic()

        restarted = {PREFIX + "k2", PREFIX + "k3"}

        def all_right() -> bool:
            # The containers the engine restarts (a policy, not removed) run again, the agent starting any
            # whose start the engine could not do, and every budget and rule is right.
            running_now = {c.name for c in running_managed(client)}
            return restarted <= running_now and mismatch(private, client) is None and rules_right(private, client)

        wait_for(all_right, MEND_S, 0.02, "budgets, rules and restarted containers right after the engine came back")
        latency = time.monotonic() - back
        running = sorted(c.name for c in running_managed(client))
        burst_log = agent.lines[lines_before:]
        print(
            f"engine stopped mid-burst, back after {down_s:.1f} s; budgets and rules right {latency:.3f} s after "
            f"it answered; running now {running}; {'; '.join(outcomes)}; agent during the burst: {burst_log}"
        )
        assert agent.proc.poll() is None
        assert "engine back after" in agent.log()
        assert restarted <= set(running), running
    finally:
        if private.pid() is None:
            private.start()
        private.wait_answers(90)


def start_quietly(private: PrivateEngine, name: str) -> int:
    """`run` of a new container while the engine may stop: exit 0, or one sentence and exit 1."""
    args = ["run", "-c", "--no-wait", "--json", "--name", PREFIX + name, "--media-ports", "10", "--ports", "dnat"]
    result = private.cli(*args)
    assert result.code in (0, 1), result.err
    if result.code:
        assert "Traceback" not in result.err, result.err
    return result.code


def test_the_host_engines_containers_are_exactly_as_before_the_engine_restarts(
    private: PrivateEngine, docker_client: Any, bystanders: dict[str, Seen]
) -> None:
    # The private engine gone and its room given back, as at the end of the run.
    problems = private.down()
    given = private.give_back()
    assert not problems, problems
    assert given.code == 0, given.err
    after = {kind: seen(docker_client, docker_client.containers.get(BYSTANDER + kind).id) for kind in bystanders}
    for kind, was in bystanders.items():
        assert after[kind] == was, f"{kind}: before {was}, after {after[kind]}"
    assert after["plain"].status == after["rt"].status == after["managed"].status == "running"
