"""A fleet on a 3-node lab swarm (lab/swarm.py): the agent as a global service adopts a stack's tasks.

Select with `-m swarm`. The lab, its registry and its agents are made once for the module and taken
away at its end, and the test checks that nothing of them is left on this machine.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from lab.peer_links import ToAddress
from lab.swarm import (
    AGENT_SERVICE,
    NODE_POOL_US,
    Lab,
    Node,
    agent_running,
    forwards,
    in_netns,
    leftovers,
    pool_split,
    push,
    start_agent_service,
    swarm_lab,
    task_states,
    tasks_on,
)

from docker_xms.adapters.rtp import NgClient, NgError, exchange, open_call, udp_socket
from docker_xms.domain.watchdog import engine_time
from tests.helpers import (
    CGROUP_WRITE_ATTEMPT,
    RTPENGINE_IMAGE,
    conntrack_drops,
    policies_in,
    run_cli,
    wait_for,
    writable_cgroup_mounts,
)
from tests.sip_calls import CALLS, MEDIA_PORT, PCAP, SCENARIO, calls_from_outside, pcap_packets

T = TypeVar("T")

pytestmark = [
    pytest.mark.engine,
    pytest.mark.slow,
    pytest.mark.swarm,
]

STACK = "xms"
SERVICE = f"{STACK}_rtpengine"
SIP_STACK = "xmssip"
SIP_SERVICE = f"{SIP_STACK}_sip"
# Each replica reserves 30 of a node's RT_MS=90: three fit on a node, a fourth does not.
RT_MS = 30
AGENT_IMAGE = "docker-xms/agent:latest"
DNAT = re.compile(r"-A DOCKER-XMS .*-j DNAT --to-destination ([0-9.]+)")
PACKETS = 50  # 1 s of 20 ms packets each way


@pytest.fixture(scope="module")
def lab(docker_client: Any, rtpengine_image: str) -> Iterator[Lab]:
    for tool, package in (("docker-registry", "docker-registry"), ("mmdebstrap", "mmdebstrap")):
        if shutil.which(tool) is None:
            pytest.fail(f"the swarm lab needs Debian's {package} package (scripts/quickstart.sh test installs it)")
    built = run_cli("build", "--agent", "-t", AGENT_IMAGE, "--if-missing", timeout=900)
    assert built.code == 0, built.err + built.out
    with swarm_lab(docker_client) as made:
        token = made.token
        agent = push(made, AGENT_IMAGE)
        made.images["rtpengine"] = push(made, RTPENGINE_IMAGE)
        start_agent_service(made, agent)
        yield made
    assert leftovers(docker_client, token, tuple(n.name for n in made.nodes)) == []


def _tasks_on(node: Node, service: str = SERVICE) -> dict[str, str]:
    return tasks_on(node, service)


def _dnat_targets(node: Node) -> list[str]:
    return DNAT.findall(node.iptables())


def _relay_through(lab: Lab, node: Node) -> None:
    """An ng offer/answer to one of the node's tasks, then RTP both ways to the node's address and back.

    The ng port is not published (it has no authentication) and a task's address is on the node's own
    bridge: the ng socket is opened in the node's network namespace. The legs stay on this machine and
    send to the node's address on the lab network, where the node's DNAT forwards the task's media range.
    """
    held = forwards(node)
    tasks = sorted(_tasks_on(node).items())
    # The first task of the profile on a node has its own media ports forwarded onto themselves: take it.
    cid, address = next(((c, a) for c, a in tasks if held[c[:12]][0] == held[c[:12]][3]), tasks[0])
    host_low, host_high, to_ip, start, end = held[cid[:12]]
    assert to_ip == address

    def on_node(port: int) -> tuple[str, int]:
        assert start <= port <= end, (port, start, end)
        return node.address, host_low + port - start

    ng = in_netns(node.container.attrs["State"]["Pid"], lambda: NgClient(address, timeout=1.0, attempts=3))
    with contextlib.closing(ng), udp_socket("0.0.0.0") as leg_a, udp_socket("0.0.0.0") as leg_b:

        def pong() -> bool:
            with contextlib.suppress(NgError):
                return ng.ping()
            return False

        wait_for(pong, timeout=90, what=f"rtpengine in {cid[:12]} to answer ng")
        call = open_call(ng, leg_a, leg_b, sdp_ip=lab.gateway)
        a_sends_to, b_sends_to = on_node(call.a_sends_to[1]), on_node(call.b_sends_to[1])
        assert host_low <= min(a_sends_to[1], b_sends_to[1]) <= max(a_sends_to[1], b_sends_to[1]) <= host_high
        try:
            done = exchange(leg_a, leg_b, a_sends_to, b_sends_to, PACKETS)
        finally:
            with contextlib.suppress(NgError):
                ng.delete(call.call_id, call.from_tag)
    # A's stream reaches the task through the node's forward and comes back to this machine, at B, from the
    # node's address.
    assert len(done.at_b) >= PACKETS - 2, len(done.at_b)
    assert {address for address, _ in done.sources_at_b} == {node.address}
    # B's too when the task's ports are forwarded onto themselves. When they are forwarded from other host
    # ports (10000-10999 for 30000-30999), rtpengine may send to a leg before that leg's own first packet
    # arrives; the node then masquerades it from the container's port (no SNAT keeps a port offset) and
    # maps the leg's packets to another port of the range: only A's direction is sure.
    if host_low == start:
        assert len(done.at_a) >= PACKETS - 2, len(done.at_a)
        assert {address for address, _ in done.sources_at_a} == {node.address}
    print(
        f"relayed through {node.name} host {host_low}-{host_high} -> {start}-{end}: {len(done.at_b)} at B, {len(done.at_a)} at A"
    )


def _state_right(lab: Lab, expected_total: int, service: str = SERVICE, rules: bool = True) -> list[str]:
    """What is wrong with budgets and rules on the lab's nodes, or [] when all is right."""
    problems = []
    total = 0
    for node in lab.nodes:
        tasks = _tasks_on(node, service)
        total += len(tasks)
        split = pool_split(node)
        held = {cid: split.get(cid, 0) for cid in tasks}
        if any(v <= 0 for v in held.values()):
            problems.append(f"{node.name}: a task holds no budget ({held})")
        if sum(split.values()) > NODE_POOL_US:
            problems.append(f"{node.name}: budgets {sum(split.values())} exceed the pool {NODE_POOL_US}")
        if tasks and sum(held.values()) != NODE_POOL_US:
            problems.append(f"{node.name}: budgets {held} do not split the pool {NODE_POOL_US} exactly")
        targets = _dnat_targets(node)
        if rules and sorted(targets) != sorted(tasks.values()):
            problems.append(f"{node.name}: DNAT rules to {sorted(targets)}, tasks at {sorted(tasks.values())}")
    if total != expected_total:
        problems.append(f"{total} tasks run, {expected_total} expected")
    return problems


def _deploy(lab: Lab, replicas: int) -> None:
    compose = run_cli(
        "compose",
        "rtpengine",
        "--replicas",
        str(replicas),
        "--ports",
        "dnat",
        "--for",
        "stack",
        "--image",
        lab.images["rtpengine"],
        "--rt-ms",
        str(RT_MS),
    )
    assert compose.code == 0, compose.err
    lab.manager.docker("stack", "deploy", "--compose-file", "-", STACK, input=compose.out, timeout=120)


def _wait_right(lab: Lab, replicas: int, timeout: float = 180, service: str = SERVICE, rules: bool = True) -> float:
    start = time.monotonic()
    last: list[str] = []

    def right() -> bool:
        nonlocal last
        last = _state_right(lab, replicas, service, rules)
        return not last

    try:
        wait_for(right, timeout=timeout, interval=0.5, what=f"{replicas} tasks with budgets and rules")
    except AssertionError as exc:
        tasks = lab.manager.docker(
            "service", "ps", "--no-trunc", "--format", "{{.Node}} {{.CurrentState}} {{.Error}}", service, check=False
        )
        raise AssertionError(f"{exc}: {last}\n{tasks}") from None
    return time.monotonic() - start


def test_a_labelled_task_reserving_rt_ms_gets_a_budget_on_its_node(lab: Lab) -> None:
    """Swarm tasks with docker-xms's labels (a plain command, no systemd) are adopted by their node's agent."""
    labels = [
        "io.docker-xms.managed=true",
        "io.docker-xms.profile=rtpengine",
        "io.docker-xms.port-strategy=dnat",
        "io.docker-xms.mode=container-address",
    ]
    args = ["service", "create", "-d", "--name", "probe", "--replicas", "3", "--generic-resource", f"RT_MS={RT_MS}"]
    for label in labels:
        args += ["--container-label", label]
    lab.manager.docker(*args, "--entrypoint", "sleep", lab.images["rtpengine"], "600")
    try:
        _wait_right(lab, 3, service="probe")
        for node in lab.nodes:
            for cid in _tasks_on(node, "probe"):
                env = json.loads(node.docker("inspect", cid))[0]["Config"]["Env"]
                assert f"DOCKER_RESOURCE_RT_MS={RT_MS}" in env
    finally:
        lab.manager.docker("service", "rm", "probe")
    wait_for(
        # A removed task's cgroup directory may stay behind on a lab node (its engine runs nested); it holds nothing.
        lambda: all(not _tasks_on(n, "probe") and not any(pool_split(n).values()) for n in lab.nodes),
        timeout=60,
        what="the probe's tasks and budgets gone",
    )


def test_a_stack_of_six_gets_budgets_that_split_each_nodes_pool_and_rules_on_its_own_node(lab: Lab) -> None:
    _deploy(lab, 6)
    # Budgets split each node's pool, and each node's DNAT rules go to its own tasks only.
    _wait_right(lab, 6)
    per_node = {n.name: len(_tasks_on(n)) for n in lab.nodes}
    assert sum(per_node.values()) == 6
    # Swarm spreads the replicas: no node holds more than its RT_MS admits.
    assert max(per_node.values()) <= NODE_POOL_US // 1000 // RT_MS, per_node
    for node in lab.nodes:
        assert sorted(c[:12] for c in _tasks_on(node)) == sorted(forwards(node)), node.name
    node = next(n for n in lab.nodes if _tasks_on(n))
    # No cgroup of the node's reachable from a task: its gate waited until the node's agent (a Swarm task
    # itself) made its own group's name=systemd mount writable; nothing else is, and no other group is seen.
    for cid in _tasks_on(node):
        mounts = node.docker("exec", cid, "cat", "/proc/self/mountinfo")
        assert writable_cgroup_mounts(mounts) == [(f"{node.parent}/{cid}", "/sys/fs/cgroup/systemd")]
        assert node.docker("exec", cid, "sh", "-c", CGROUP_WRITE_ATTEMPT).split() == ["0"]
    _relay_through(lab, node)


def test_draining_a_node_moves_its_tasks_and_their_budgets_and_rules_follow(lab: Lab) -> None:
    _deploy(lab, 6)
    _wait_right(lab, 6)
    drained = next(n for n in lab.nodes if _tasks_on(n))
    others = [n for n in lab.nodes if n is not drained]
    lab.manager.docker("node", "update", "--availability", "drain", drained.name)
    try:
        # Swarm stops the node's agent together with its media servers: the agent lingers until they are
        # gone, so that their rules go with them (before, the last one's rules stayed behind).
        wait_for(lambda: not _tasks_on(drained), timeout=120, what=f"{drained.name}'s tasks to stop")
        wait_for(lambda: sum(len(_tasks_on(n)) for n in others) == 6, timeout=180, what="six tasks on the other nodes")
        seconds = _wait_right(lab, 6, timeout=60)
        print(f"\nbudgets and rules right {seconds:.2f} s after the moved tasks ran")
        assert seconds <= 5, seconds
        assert sum(pool_split(drained).values()) == 0
        assert _dnat_targets(drained) == []
    finally:
        lab.manager.docker("node", "update", "--availability", "active", drained.name)
        wait_for(lambda: agent_running(drained), timeout=120, what=f"the agent back on {drained.name}")


def test_scaling_keeps_budgets_and_rules_right_and_a_replica_beyond_capacity_stays_pending(lab: Lab) -> None:
    _deploy(lab, 6)
    _wait_right(lab, 6)
    for replicas in (9, 3):
        lab.manager.docker("service", "scale", "-d", f"{SERVICE}={replicas}")
        _wait_right(lab, replicas, timeout=240)
    # Three nodes of RT_MS=90 admit nine replicas of 30: the tenth stays pending.
    lab.manager.docker("service", "scale", "-d", f"{SERVICE}=10")
    _wait_right(lab, 9, timeout=240)

    def pending_reason() -> str:
        return next(
            (f"{state} {error}" for state, error in task_states(lab, SERVICE) if state.startswith("Pending")), ""
        )

    wait_for(lambda: "insufficient resources" in pending_reason(), timeout=60, what="a pending task")


def _agent_container(node: Node) -> str:
    ids = node.docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=docker-xms-agent").split()
    assert len(ids) == 1, f"{node.name}: agents {ids}"
    return ids[0]


def test_a_nodes_agent_killed_during_a_scale_step_comes_back_and_everything_ends_right(lab: Lab) -> None:
    _deploy(lab, 3)
    _wait_right(lab, 3)
    node = lab.nodes[1]
    killed = _agent_container(node)
    # SIGKILL: no lingering, no last reconcile; the scale step goes on while the node has no agent.
    node.docker("kill", killed)
    lab.manager.docker("service", "scale", "-d", f"{SERVICE}=9")
    wait_for(
        lambda: agent_running(node) and _agent_container(node) != killed,
        timeout=120,
        what=f"Swarm to start the agent on {node.name} again",
    )
    seconds = _wait_right(lab, 9, timeout=240)
    print(f"\nnine tasks with budgets and rules {seconds:.2f} s after the scale step began")
    assert len(_tasks_on(node)) == 3


def test_a_node_restarted_whole_comes_back_and_everything_ends_right(lab: Lab) -> None:
    _deploy(lab, 6)
    _wait_right(lab, 6)
    node = lab.nodes[2]
    before = set(_tasks_on(node))
    assert before, f"{node.name} runs no task to restart"
    # Its engine stops its tasks and its agent (which lingers while they drain), then starts again from its
    # state: it rejoins the swarm and Swarm settles the replicas; the agent's task starts again with it.
    node.container.restart(timeout=90)
    wait_for(node.answers, timeout=120, what=f"the engine in {node.name}")
    wait_for(
        lambda: "Ready" in lab.manager.docker("node", "inspect", "--format", "{{.Status.State}}", node.name).title(),
        timeout=120,
        what=f"{node.name} ready in the swarm again",
    )
    wait_for(lambda: agent_running(node), timeout=120, what=f"the agent on {node.name} again")
    seconds = _wait_right(lab, 6, timeout=300)
    print(f"\nsix tasks with budgets and rules {seconds:.2f} s after the node was back")
    # What ran there before the restart ended with it; what runs there now is right (checked above).
    assert not before & set(_tasks_on(node))


PLAN_STACK = "xmsplan"
PLAN_SERVICE = f"{PLAN_STACK}_rtpengine"


def _stack_gone(lab: Lab, stack: str, service: str) -> None:
    lab.manager.docker("stack", "rm", stack, check=False)
    wait_for(lambda: all(not _tasks_on(n, service) for n in lab.nodes), timeout=120, what=f"the {stack} stack gone")


def _clear(lab: Lab) -> None:
    """No stack of the tests above: each node's RT_MS free for the next one."""
    for stack, service in ((STACK, SERVICE), (PLAN_STACK, PLAN_SERVICE), (SIP_STACK, SIP_SERVICE)):
        _stack_gone(lab, stack, service)
    wait_for(lambda: not any(any(pool_split(n).values()) for n in lab.nodes), 120, what="every node's pool free")


def _in_agent(node: Node, *args: str) -> str:
    """A docker-xms command run by the node's own agent container (its settings, its /run)."""
    return node.docker("exec", _agent_container(node), "python3", "-m", "docker_xms", *args)


def test_a_task_started_while_its_nodes_agent_is_stopped_waits_then_starts_with_its_plan(lab: Lab) -> None:
    """No agent on the node when Swarm starts the task: its server waits (`ps`: waiting). The agent comes
    20 s later and hands it its plan: the server then starts, every real-time thread at SCHED_FIFO from the
    first, with no restart by hand."""
    from docker_xms.adapters.profile_store import load_profile

    _clear(lab)
    node = lab.nodes[1]
    wanted = set(load_profile("rtpengine").rt_threads)
    away = f"node.hostname!={node.name}"
    lab.manager.docker("service", "update", "-d", "--constraint-add", away, AGENT_SERVICE)
    try:
        wait_for(lambda: not agent_running(node), timeout=120, what=f"no agent on {node.name}")
        compose = run_cli(
            "compose", "rtpengine", "--replicas", "1", "--for", "stack", "--image", lab.images["rtpengine"],
            "--rt-ms", str(RT_MS),
        )  # fmt: skip
        assert compose.code == 0, compose.err
        data = yaml.safe_load(compose.out)
        data["services"]["rtpengine"]["deploy"]["placement"] = {"constraints": [f"node.hostname=={node.name}"]}
        lab.manager.docker("stack", "deploy", "--compose-file", "-", PLAN_STACK, input=yaml.safe_dump(data))
        ((cid, _),) = wait_for(lambda: list(_tasks_on(node, PLAN_SERVICE).items()), 120, what="the task on the node")
        on_node = {"DOCKER_HOST": node.docker_host}
        rows = {row["id"]: row for row in json.loads(run_cli("ps", "--json", env=on_node).out)}
        assert rows[cid[:12]]["plan"] == "waiting", rows
        # The 20 s of the scenario: the server does not start meanwhile.
        for _ in range(40):
            assert not wanted & set(policies_in(node.cpu_dir() / cid))
            time.sleep(0.5)
        rows = {row["id"]: row for row in json.loads(run_cli("ps", "--json", env=on_node).out)}
        assert rows[cid[:12]]["plan"] == "waiting", rows

        back = time.monotonic()
        lab.manager.docker("service", "update", "-d", "--constraint-rm", away, AGENT_SERVICE)
        first = wait_for(
            lambda: (found := policies_in(node.cpu_dir() / cid)) and wanted <= set(found) and found,
            timeout=150,
            interval=0.05,
            what="the server's real-time threads",
        )
        print(f"\nthe server's threads {time.monotonic() - back:.1f} s after the agent was let back: {first}")
        assert all(first[name] == {"SCHED_FIFO/50"} for name in wanted), first
        verified = node.docker(
            "exec", _agent_container(node), "python3", "-m", "docker_xms", "rt", "verify", "--json", cid, check=False
        )
        result = json.loads(verified)
        print(f"rt verify in the node's agent: ok {result['ok']}, {len(result['rt_threads'])} real-time threads")
        assert result["ok"] is True, verified
        rows = {row["id"]: row for row in json.loads(_in_agent(node, "ps", "--json"))}
        assert rows[cid[:12]]["plan"] == "given", rows
        assert rows[cid[:12]]["advertise"] == node.address, rows
    finally:
        lab.manager.docker("service", "update", "-d", "--constraint-rm", away, AGENT_SERVICE, check=False)
        _stack_gone(lab, PLAN_STACK, PLAN_SERVICE)
        wait_for(lambda: agent_running(node), timeout=120, what=f"the agent back on {node.name}")


def _node_conntrack_drops(node: Node) -> int:
    """conntrack_drops in the node's own network namespace, where its forwards are."""
    stat = subprocess.run(
        ["nsenter", "-t", str(_node_pid(node)), "-n", "cat", "/proc/net/stat/nf_conntrack"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return conntrack_drops(stat)


def _long_call_scenario(path: Path) -> Path:
    """The shipped caller scenario with its 7 s recording played twice: 15 s of media, a call of 16 s."""
    text = SCENARIO.read_text()
    last_pause = '<pause milliseconds="8000"/>'
    assert last_pause in text
    again = f'<nop><action><exec play_pcap_audio="{PCAP}"/></action></nop>'
    path.write_text(text.replace(last_pause, f'<pause milliseconds="7500"/>\n  {again}\n  {last_pause}'))
    return path


def _node_pid(node: Node) -> int:
    """The node container's first process now (a node restarted whole by an earlier test has a new one)."""
    node.container.reload()
    return int(node.container.attrs["State"]["Pid"])


def _numsessions(node: Node, cid: str) -> int:
    out = node.docker("exec", cid, "rtpengine-ctl", "list", "numsessions")
    match = re.search(r"Current sessions total: (\d+)", out)
    assert match, out
    return int(match.group(1))


def _container_state(node: Node, cid: str) -> dict[str, Any]:
    return dict(json.loads(node.docker("inspect", cid))[0]["State"])


def _drops_on(node: Node) -> Callable[[], int]:
    """Packets connection tracking dropped on this host (the peers' side) and in the node (its forwards)."""
    return lambda: conntrack_drops() + _node_conntrack_drops(node)


def _sip_stack(lab: Lab, sip_image: str, replicas: int) -> None:
    image = push(lab, sip_image)
    compose = run_cli(
        "compose", "sip", "--replicas", str(replicas), "--ports", "dnat", "--for", "stack", "--image", image,
        "--rt-ms", str(RT_MS),
    )  # fmt: skip
    assert compose.code == 0, compose.err
    lab.manager.docker("stack", "deploy", "--compose-file", "-", SIP_STACK, input=compose.out, timeout=120)


def _sip_task_ready(node: Node) -> tuple[str, int]:
    """The node's sip task, once its proxy answers; the host port its SIP is published on. Swarm may replace
    a task that did not boot (a v1 gate left closed for 60 s): whichever of the node's tasks answers first."""

    def healthy() -> str | None:
        for cid in _tasks_on(node, SIP_SERVICE):
            with contextlib.suppress(AssertionError):
                if _container_state(node, cid).get("Health", {}).get("Status") == "healthy":
                    return cid
        return None

    try:
        cid = wait_for(healthy, timeout=240, what="the proxy to answer OPTIONS")
    except AssertionError as exc:
        found = []
        for task in _tasks_on(node, SIP_SERVICE):
            state = _container_state(node, task)
            units = ("docker-xms-plan", "kamailio", "rtpengine-daemon")
            journal = node.docker(
                "exec", task, "journalctl", "--no-pager", "-n", "60", *(f"-u{u}" for u in units), check=False
            )
            found.append(f"{task[:12]} {state.get('Status')} health {state.get('Health', {}).get('Log', [])[-2:]}")
            found.append(journal)
        raise AssertionError(f"{exc}; " + "\n".join(found)) from None
    ports = json.loads(node.docker("inspect", cid))[0]["NetworkSettings"]["Ports"]
    return cid, int(ports["5060/udp"][0]["HostPort"])


def test_ten_sip_calls_through_a_nodes_task_from_peers_that_reach_only_that_node_are_heard_both_ways(
    lab: Lab, sip_image: str, tmp_path: Path
) -> None:
    """The sip profile as a stack of three; caller and callee are SIPp in namespaces of this machine whose only
    route is to the node's address, the callee sending its own recording from the start: ten calls through
    that node's task, answered, every packet both ways, from the node's address only."""
    if shutil.which("sipp") is None:
        pytest.fail("SIPp is not installed: apt-get install sip-tester")
    _clear(lab)
    _sip_stack(lab, sip_image, 3)
    peers = None
    try:
        _wait_right(lab, 3, timeout=300, service=SIP_SERVICE)
        node = next(n for n in (lab.nodes[2], lab.nodes[1], lab.nodes[0]) if _tasks_on(n, SIP_SERVICE))
        _, sip_port = _sip_task_ready(node)
        peers = ToAddress(node.address, media_port=MEDIA_PORT)
        calls, _ = calls_from_outside((node.address, sip_port), peers, tmp_path, drops=_drops_on(node))
        played = pcap_packets(PCAP)
        print(f"\nsip through {node.name} ({node.address}:{sip_port}) from peers outside it: {calls.text()}")
        calls.check(played, played)
    finally:
        if peers is not None:
            peers.close()
        _stack_gone(lab, SIP_STACK, SIP_SERVICE)


def test_draining_a_node_lets_its_sip_calls_end_before_the_task_stops_then_its_budget_and_rules_go(
    lab: Lab, sip_image: str, tmp_path: Path
) -> None:
    """A sip task (Kamailio + rtpengine) holding 10 calls with media is drained: every call ends normally.

    Caller and callee are SIPp in namespaces of this machine whose only route is to the node's address (the
    task advertises it: its plan), the callee sending its own recording from the start; the caller's calls
    last 16 s. Packets are counted by the kernel in the peers' namespaces. Stacks of the tests above would
    share the nodes' RT_MS: they are removed first.
    """
    if shutil.which("sipp") is None:
        pytest.fail("SIPp is not installed: apt-get install sip-tester")
    _clear(lab)
    _sip_stack(lab, sip_image, 1)
    drained: Node | None = None
    peers = None
    try:
        _wait_right(lab, 1, timeout=300, service=SIP_SERVICE)
        node = next(n for n in lab.nodes if _tasks_on(n, SIP_SERVICE))
        cid, sip_port = _sip_task_ready(node)
        peers = ToAddress(node.address, media_port=MEDIA_PORT)
        began = time.time()

        def drain() -> dict[str, Any]:
            nonlocal drained
            wait_for(lambda: _numsessions(node, cid) == CALLS, timeout=15, what=f"{CALLS} calls in rtpengine")
            # The last ones' 200 and ACK through the proxy as well.
            time.sleep(1.0)
            drain_at = time.time()
            lab.manager.docker("node", "update", "--availability", "drain", node.name)
            drained = node
            # Mid-way through the calls: the task stops (Swarm asked) but holds every call.
            time.sleep(4.0)
            running = _container_state(node, cid)["Running"]
            return {"at": drain_at, "running": running, "sessions": _numsessions(node, cid) if running else 0}

        calls, mid = calls_from_outside(
            (node.address, sip_port), peers, tmp_path, _long_call_scenario(tmp_path / "uac_long.xml"), drain,
            _drops_on(node),
        )  # fmt: skip

        # The node keeps no budget and no rule once its task is gone.
        def nothing_held() -> bool:
            return sum(pool_split(node).values()) == 0 and not _dnat_targets(node)

        wait_for(lambda: not _container_state(node, cid)["Running"], timeout=90, what="the drained task to stop")
        finished = engine_time(_container_state(node, cid)["FinishedAt"]) or 0.0
        wait_for(nothing_held, timeout=90, interval=0.1, what=f"no budget and no rule on {node.name}")
        held_nothing_after = time.time() - mid["at"]
        # The replacement on another node gets its budget and rules.
        replaced = _wait_right(lab, 1, timeout=240, service=SIP_SERVICE)
        print(
            f"\nsip drain on {node.name}, callers outside it: {calls.text()}; rtpengine sessions {mid['sessions']} "
            f"4 s into the drain; calls {calls.ended - began:.1f} s; drain {mid['at'] - began:.1f} s into them, the "
            f"task stopped {finished - mid['at']:.1f} s after the drain and {finished - calls.ended:+.1f} s after "
            f"the calls ended; no budget and no rule on the node {held_nothing_after:.1f} s after the drain; the "
            f"replacement's budget and rules {replaced:.1f} s after that"
        )
        played = pcap_packets(PCAP)
        calls.check(2 * played, played)
        assert mid["running"]
        assert mid["sessions"] == CALLS
        # The task stopped only after the last call's BYE (SIPp exits once its 200 is back).
        assert finished >= calls.ended - 1.0, (finished, calls.ended)
    finally:
        if peers is not None:
            peers.close()
        if drained is not None:
            lab.manager.docker("node", "update", "--availability", "active", drained.name)
        _stack_gone(lab, SIP_STACK, SIP_SERVICE)
        if drained is not None:
            wait_for(lambda: agent_running(drained), timeout=120, what=f"the agent back on {drained.name}")
