"""Fleet on one engine: replicas started by docker-compose from `docker-xms compose`, and a container
started by a plain `docker run --label ...`, are adopted by an agent: budgets (the cgroup files), one
DNAT rule per media range, SCHED_FIFO inside, `ps` origins; and given back when they go.

docker-compose is Debian's 1.29 (scripts/quickstart.sh installs it). The stack file is checked with
`docker stack config`, which reads a file without a swarm, when the docker client has it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docker_xms.adapters import adoption_store
from docker_xms.settings import DEFAULT_LOCK
from tests.helpers import (
    AGENT_ARGV,
    CGROUP_WRITE_ATTEMPT,
    TEST_LABEL,
    LoggedAgent,
    agent_for_a_test,
    compose_replica,
    docker_compose,
    host_mountinfo,
    in_container,
    policies_in,
    renamed_profile_env,
    run_cli,
    running_agents,
    systemd_run_kwargs,
    wait_for,
    writable_cgroup_mounts,
)
from tests.host_state import fair_shares

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PARENT = Path("/sys/fs/cgroup/cpu/docker")
PLANS = adoption_store.path_for(DEFAULT_LOCK)
# A server whose media ports lie inside the kernel's default ephemeral range, as XMS's do.
WIDE_PROFILE = """
[profile]
name = "wide"
image = "docker-xms-test/busybox:latest"

[[media.ranges]]
name = "rtp"
protocol = "udp"
range = "40000-40099"

[readiness]
systemd = false
"""


def budget(container_id: str) -> int:
    try:
        return int((PARENT / container_id / "cpu.rt_runtime_us").read_text())
    except OSError:
        return 0


def rules() -> dict[str, tuple[int, int]]:
    """Each container's forwarded host range (12-character id -> first-last), from the nat chain."""
    out = subprocess.run(["iptables", "-t", "nat", "-S", "DOCKER-XMS"], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        match = re.search(r"--dport (\d+):(\d+) .*docker-xms:([0-9a-f]{12}):", line)
        if match:
            found[match.group(3)] = (int(match.group(1)), int(match.group(2)))
    return found


def right(ids: list[str], client: Any) -> bool:
    """Every one has its fair share in the kernel and one rule for its 1,000 media ports."""
    shares = fair_shares(client)
    held = rules()
    return all(
        budget(cid) == shares.get(cid)
        and budget(cid) > 0
        and cid[:12] in held
        and held[cid[:12]][1] - held[cid[:12]][0] == 999
        for cid in ids
    )


def gone(ids: list[str]) -> bool:
    held = rules()
    plans = adoption_store.load(PLANS)
    return not any(cid[:12] in held or cid in plans for cid in ids)


@pytest.fixture
def agent(docker_client: Any, rtpengine_image: str, tmp_path: Path) -> Iterator[LoggedAgent]:
    # Its own agent lock, so that it runs beside one the host may have; both reconcile under the host lock.
    argv = [sys.executable, "-m", "docker_xms", "agent", "--interval", "30"]
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "wide.toml").write_text(WIDE_PROFILE)
    env = {
        **os.environ,
        "DOCKER_XMS_AGENT_LOCK": str(tmp_path / "agent.lock"),
        "DOCKER_XMS_PROFILE_PATH": str(profiles),
    }
    with agent_for_a_test(LoggedAgent(argv, env)) as process:
        yield process


def compose_file(tmp_path: Path, *args: str) -> Path:
    result = run_cli("compose", "rtpengine", *args)
    assert result.code == 0, result.err
    path = tmp_path / f"{uuid.uuid4().hex[:6]}.yml"
    path.write_text(result.out)
    return path


def test_compose_up_gets_budgets_and_rules_within_2_s_and_down_gives_them_back(
    agent: LoggedAgent, docker_client: Any, tmp_path: Path
) -> None:
    if shutil.which("docker-compose") is None:
        pytest.fail("this test needs Debian's docker-compose package (scripts/quickstart.sh test installs it)")
    path = compose_file(tmp_path, "--replicas", "2")
    assert docker_compose("-f", str(path), "config", "-q").returncode == 0
    project = f"xmstest{uuid.uuid4().hex[:6]}"
    base = ["-p", project, "-f", str(path)]
    try:
        up = docker_compose(*base, "up", "-d")
        assert up.returncode == 0, up.stderr
        started = time.monotonic()
        ids = [c.id for c in docker_client.containers.list(filters={"label": f"com.docker.compose.project={project}"})]
        assert len(ids) == 2
        wait_for(lambda: right(ids, docker_client), 2, 0.05, "budgets and rules of both replicas")
        print(f"budgets and rules {time.monotonic() - started:.2f} s after docker-compose up returned")
        assert rules()[ids[0][:12]] != rules()[ids[1][:12]]

        ps = run_cli("ps", "--json")
        rows = {row["id"]: row for row in json.loads(ps.out)}
        for cid in ids:
            assert rows[cid[:12]]["origin"] == f"compose:{project}"
            assert "/media" in rows[cid[:12]]["ports"]
        # The server's own threads run SCHED_FIFO under the budget the agent wrote.
        wait_for(lambda: run_cli("rt", "verify", ids[0]).code == 0, 90, 1, "SCHED_FIFO threads in a replica")
        # An agent already on the host (the README's demo starts one) may adopt them first, and then this
        # test's agent has no line to log; `rt verify` above is the proof either way.
        if not [line for line in running_agents() if "--interval" not in line]:
            assert "SCHED_FIFO works in" in agent.log()
        # No cgroup of the host's reachable: the replica's gate waited until the agent made its own group's
        # name=systemd mount writable (the replica's root sees it, and the host, at the container's group);
        # every other cgroup file stays read-only and no other container's group is visible.
        for cid in ids:
            own = [(f"/docker/{cid}", "/sys/fs/cgroup/systemd")]
            assert writable_cgroup_mounts(in_container(cid, "cat", "/proc/self/mountinfo")) == own
            assert writable_cgroup_mounts(host_mountinfo(cid)) == own
            assert in_container(cid, "sh", "-c", CGROUP_WRITE_ATTEMPT).split() == ["0"]

        down = docker_compose(*base, "down", "-t", "2")
        assert down.returncode == 0, down.stderr
        stopped = time.monotonic()
        wait_for(lambda: gone(ids), 2, 0.05, "the rules and plans to be given back")
        print(f"rules and plans given back {time.monotonic() - stopped:.2f} s after docker-compose down returned")
    finally:
        docker_compose(*base, "down", "-t", "1")


def test_a_stack_file_is_valid_for_docker_stack_deploy(tmp_path: Path) -> None:
    probe = subprocess.run(["docker", "stack", "config", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("this docker client has no `docker stack config`")
    path = compose_file(tmp_path, "--replicas", "6", "--for", "stack")
    checked = subprocess.run(["docker", "stack", "config", "-c", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "RT_MS" in checked.stdout
    assert "external: true" in checked.stdout


def test_a_plain_docker_run_with_the_labels_is_adopted_and_given_back(
    agent: LoggedAgent, docker_client: Any, rtpengine_image: str
) -> None:
    kwargs = systemd_run_kwargs("fleet")
    labels = {**kwargs.pop("labels"), "io.docker-xms.managed": "true", "io.docker-xms.profile": "rtpengine"}  # type: ignore[dict-item]
    # No --cpu-rt-runtime: the agent writes the budget into the cgroup the engine made with 0.
    container = docker_client.containers.run(
        rtpengine_image, name=f"fleet-{uuid.uuid4().hex[:6]}", labels=labels, **kwargs
    )
    try:
        started = time.monotonic()
        wait_for(lambda: right([container.id], docker_client), 2, 0.05, "its budget and rule")
        print(f"budget and rule {time.monotonic() - started:.2f} s after docker run returned")
        code, out = container.exec_run(["chrt", "--fifo", "1", "true"])
        assert code == 0, out
        rows = {row["id"]: row for row in json.loads(run_cli("ps", "--json").out)}
        assert rows[container.id[:12]]["origin"] == "docker"
        assert TEST_LABEL in container.labels
    finally:
        container.remove(force=True)
    wait_for(lambda: gone([container.id]), 2, 0.05, "its rule and plan to be given back")


def test_an_adopted_container_gets_its_ephemeral_range_off_its_media_ports(
    agent: LoggedAgent, docker_client: Any, busybox_image: str
) -> None:
    labels = {TEST_LABEL: "fleet", "io.docker-xms.managed": "true", "io.docker-xms.profile": "wide"}
    container = docker_client.containers.run(
        busybox_image,
        ["/bin/busybox", "sleep", "300"],
        detach=True,
        name=f"fleet-{uuid.uuid4().hex[:6]}",
        labels=labels,
    )
    try:

        def ephemeral() -> str:
            return container.exec_run(["/bin/busybox", "cat", "/proc/sys/net/ipv4/ip_local_port_range"]).output.decode()

        # As run would: the widest stretch of the kernel's default range clear of 40000-40099.
        wait_for(lambda: container.id[:12] in rules(), 2, 0.05, "its rule")
        assert rules()[container.id[:12]][1] - rules()[container.id[:12]][0] == 99
        wait_for(lambda: ephemeral().split() == ["40100", "60999"], 2, 0.05, "its ephemeral range")
    finally:
        container.remove(force=True)
    wait_for(lambda: gone([container.id]), 2, 0.05, "its rule and plan to be given back")


def _policies(container: Any) -> dict[str, set[str]]:
    return policies_in(PARENT / container.id)


def test_a_servers_threads_started_before_its_budget_are_raised_when_it_has_one(
    docker_client: Any, rtpengine_image: str
) -> None:
    """A node's engine may start a labelled server before its agent runs: rtpengine then finds SCHED_FIFO
    refused and runs its workers SCHED_OTHER. What the agent does on adopting it, raise_threads, puts them
    where rtpengine itself would have. The container carries no docker-xms label, so that no agent on this
    host (the README's demo starts one) adopts it before the test has given it a budget by hand."""
    from docker_xms.adapters.config import load_settings
    from docker_xms.adapters.engine import Engine
    from docker_xms.adapters.profile_store import load_profile
    from docker_xms.usecases.rt import open_host, raise_threads
    from tests.private_engine import host_room

    settings = load_settings()
    profile = load_profile("rtpengine", settings.profile_dirs)
    wanted = set(profile.rt_threads)
    kwargs = systemd_run_kwargs("fleet")
    kwargs["cap_add"] = ["SYS_NICE"]
    container = docker_client.containers.run(rtpengine_image, name=f"fleet-{uuid.uuid4().hex[:6]}", **kwargs)
    engine = Engine.connect(timeout=60)
    try:

        def started() -> dict[str, set[str]] | None:
            found = _policies(container)
            return found if wanted <= set(found) else None

        before = wait_for(started, 60, 0.5, "rtpengine's threads")
        assert all(before[name] == {"SCHED_OTHER/0"} for name in wanted), before
        with host_room(20_000):
            parent = PARENT / "cpu.rt_runtime_us"
            parent.write_text(f"{int(parent.read_text()) + 20_000}\n")
            (PARENT / container.id / "cpu.rt_runtime_us").write_text("20000\n")
        rt = open_host(engine, settings)
        raised = raise_threads(rt, container.id, profile.rt_threads, profile.rt_priority)
        after = _policies(container)
        print(f"raised {len(raised)} threads: {sorted(raised)}; now {after}")
        assert set(raised) == wanted
        assert all(after[name] == {f"SCHED_FIFO/{profile.rt_priority}"} for name in wanted), after
        # Only those: rtpengine's main thread and the rest stay as they were.
        assert after["rtpengine"] == {"SCHED_OTHER/0"}, after
        assert raise_threads(rt, container.id, profile.rt_threads, profile.rt_priority) == []
    finally:
        engine.close()
        container.remove(force=True)
        run_cli("rt", "rebalance")


# --- The plan: a replica's server waits until docker-xms has handed it its address and ports ---------------

# The rtpengine profile under another name: an agent that knows only the installed profiles (the README's
# demo starts one) gives such a replica its budget but not its plan; this test's agent, which knows it, does.
PLAN_PROFILE = "planwait"


def _unit_state(cid: str, unit: str) -> str:
    done = subprocess.run(["docker", "exec", cid, "systemctl", "is-active", unit], capture_output=True, text=True)
    return done.stdout.strip()


def _journal(cid: str) -> str:
    """The plan unit's lines in the container's journal (systemd's PID 1 has no output of its own)."""
    done = subprocess.run(
        ["docker", "exec", cid, "journalctl", "-u", "docker-xms-plan", "--no-pager", "-o", "cat"],
        capture_output=True,
        text=True,
    )
    return done.stdout


def _plan_row(cid: str, env: dict[str, str]) -> str:
    result = run_cli("ps", "--json", env=env)
    assert result.code == 0, result.err
    return str({row["id"]: row for row in json.loads(result.out)}[cid[:12]]["plan"])


def test_a_replica_waits_for_its_plan_and_starts_with_it_once_an_agent_hands_it_over(
    docker_client: Any, rtpengine_image: str, tmp_path: Path
) -> None:
    from docker_xms.adapters import hostnet
    from docker_xms.adapters.profile_store import load_profile
    from tests.integration.test_outside import media_of, ng_client, sdp_for

    env = renamed_profile_env(tmp_path, "rtpengine", PLAN_PROFILE, plan_wait_s="120")
    wanted = set(load_profile("rtpengine", ()).rt_threads)
    with compose_replica(tmp_path, PLAN_PROFILE, env, docker_client) as cid:
        logs = lambda: _journal(cid)  # noqa: E731
        assert _plan_row(cid, env) == "waiting"
        # No agent of this host knows its profile (on cgroup v1 none may run at all: its gate then holds
        # systemd too): its server does not start, however long it is watched.
        for _ in range(15):
            assert not wanted & set(_policies(docker_client.containers.get(cid))), logs()
            time.sleep(0.2)
        assert _plan_row(cid, env) == "waiting"

        with agent_for_a_test(LoggedAgent(AGENT_ARGV, {**os.environ, **env})) as agent:
            wait_for(lambda: "plan given to" in agent.log(), 15, 0.1, "the agent to hand over the plan")
            # Its threads, from the first moment they exist, run SCHED_FIFO: the budget came before the plan.
            first = wait_for(
                lambda: (found := _policies(docker_client.containers.get(cid))) and wanted <= set(found) and found,
                60,
                0.05,
                "rtpengine's real-time threads",
            )
            assert all(first[name] == {"SCHED_FIFO/50"} for name in wanted), first
            assert run_cli("rt", "verify", cid, env=env).code == 0
            assert _plan_row(cid, env) == "given"
            print(f"container log:\n{logs()}\nagent: {[ln for ln in agent.lines if cid[:12] in ln or 'plan' in ln]}")
            assert "waiting up to 120 s" in logs()
            assert re.search(r"plan given after \d+ s", logs())

            # Its media ports are the host range's own numbers, and it advertises this node's address.
            low, high = rules()[cid[:12]]
            conf = in_container(cid, "cat", "/etc/rtpengine/rtpengine.conf")
            assert f"port-min = {low}\n" in conf, conf
            assert f"port-max = {high}\n" in conf, conf
            node = hostnet.host_address()
            assert f"interface = pub/any!{node};" in conf, conf
            address = docker_client.containers.get(cid).attrs["NetworkSettings"]["IPAddress"]
            sdp = ng_client(
                2223,
                "offer",
                "--call-id=plan-1",
                "--from-tag=caller",
                "--trust-address",
                f"--sdp={sdp_for('192.0.2.10', 4000)}",
                host=address,
            )
            advertised, port = media_of(sdp)
            print(f"offer answered with {advertised}:{port}; host range {low}-{high}")
            assert advertised == node
            assert low <= port <= high


def test_a_replica_whose_plan_never_comes_stays_stopped_when_the_settings_say_so(
    docker_client: Any, rtpengine_image: str, tmp_path: Path
) -> None:
    env = renamed_profile_env(tmp_path, "rtpengine", PLAN_PROFILE, plan_wait_s="3", start_without_plan="0")
    # An agent that does not know its profile: it opens the replica's cgroup and grants its budget, but
    # has no plan to hand it.
    stranger = {**os.environ, **env, "DOCKER_XMS_PROFILE_PATH": str(tmp_path / "none")}
    with (
        compose_replica(tmp_path, PLAN_PROFILE, env, docker_client) as cid,
        agent_for_a_test(LoggedAgent(AGENT_ARGV, stranger)),
    ):
        logs = lambda: _journal(cid)  # noqa: E731
        wait_for(lambda: "stays stopped" in logs(), 60, 0.5, "the replica to give up waiting")
        print(logs())
        assert "waiting up to 3 s" in logs()
        assert "no plan within 3 s" in logs()
        assert _unit_state(cid, "rtpengine-daemon.service") == "inactive"
        assert _unit_state(cid, "docker-xms-plan.service") == "failed"
        assert _plan_row(cid, env) == "none"
