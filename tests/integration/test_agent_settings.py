"""The agent a command installs reads the settings that command read: same pool cap, same lock.

The unit's text is checked by systemd's own parser (`systemd-analyze verify`, which works without
systemd as the init system: it loads the unit and checks that ExecStart can be run), and an agent
started with exactly the unit's environment is shown to keep the budgets a capped `rt rebalance` set.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from docker_xms.adapters.config import load_settings
from tests.helpers import LoggedAgent, counter, free_port, run_cli, running_agents, wait_for
from tests.host_state import PARENT, kernel_pool, running_managed

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PREFIX = "agent-test-settings-"
ANALYZE = shutil.which("systemd-analyze")


def unit_environment(unit: str) -> dict[str, str]:
    """The environment systemd gives the service: Environment="K=V" lines, C-style quoted, %% for %."""
    env: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            for word in shlex.split(line[len("Environment=") :]):
                name, _, value = word.partition("=")
                env[name] = value.replace("%%", "%")
    return env


def exec_start(unit: str) -> list[str]:
    match = re.search(r"^ExecStart=(.+)$", unit, re.M)
    assert match, unit
    return shlex.split(match.group(1))


def verify(unit_file: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, "verify", str(unit_file)], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")
def test_the_unit_carries_the_installers_settings_and_systemd_accepts_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('cgroup_parent = ""\n')
    lock = tmp_path / "lock dir" / "host%1.lock"
    env = {"DOCKER_XMS_CONFIG": str(config), "DOCKER_XMS_RT_POOL_US": "400000", "DOCKER_XMS_LOCK": str(lock)}
    result = run_cli("agent", "install", "--print", env=env)
    assert result.code == 0, result.err
    unit = result.out
    carried = unit_environment(unit)
    assert {k: carried.get(k) for k in env} == {
        "DOCKER_XMS_CONFIG": str(config),
        "DOCKER_XMS_RT_POOL_US": "400000",
        "DOCKER_XMS_LOCK": str(lock),
    }
    # And every other override in force where it was installed (the suite's own, for one).
    assert carried == load_settings({**os.environ, "DOCKER_XMS_START_AGENT": "0", **env}).environment()
    unit_file = tmp_path / "docker-xms-agent.service"
    unit_file.write_text(unit)
    checked = verify(unit_file)
    # verify exits 0 on lines it ignores (an invalid assignment, a specifier it cannot resolve), so
    # anything it says at all is a fault.
    assert checked.returncode == 0, checked.stderr
    assert not (checked.stdout + checked.stderr).strip()

    # The check is real: the same unit with an ExecStart that is not there is refused.
    broken = tmp_path / "broken" / "docker-xms-agent.service"
    broken.parent.mkdir()
    broken.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=/nonexistent/docker-xms", unit, flags=re.M))
    refused = verify(broken)
    assert refused.returncode != 0
    assert "/nonexistent/docker-xms" in refused.stderr


def test_the_alternative_without_systemd_carries_the_settings_too(tmp_path: Path) -> None:
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd runs this host: agent install would install the service")
    env = {"DOCKER_XMS_CONFIG": str(tmp_path / "none.toml"), "DOCKER_XMS_RT_POOL_US": "400000"}
    result = run_cli("agent", "install", env=env)
    assert result.code == 1
    assert f"nohup env DOCKER_XMS_CONFIG={tmp_path / 'none.toml'} DOCKER_XMS_RT_POOL_US=400000 " in result.err
    assert 'Environment="DOCKER_XMS_RT_POOL_US=400000"' in result.out


class ServiceAgent(LoggedAgent):
    """The agent as systemd would start it from the unit: its ExecStart, its environment and nothing else."""

    def __init__(self, unit: str, *extra: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **unit_environment(unit)}
        super().__init__([*exec_start(unit), *extra], env, cwd="/")


def _reconciliations(port: int) -> float:
    with contextlib.suppress(OSError):
        return counter(port, "docker_xms_reconciliations")
    return 0.0


def budgets() -> dict[str, int]:
    return {cid: int((PARENT / cid / "cpu.rt_runtime_us").read_text()) for cid in _running()}


def _running() -> dict[str, int]:
    client = docker.from_env()
    try:
        return running_managed(client)
    finally:
        client.close()


def shares(pool: int) -> dict[str, int]:
    """floor(pool * weight / total weight) for every running managed container, from the engine's labels."""
    weights = _running()
    total = sum(weights.values())
    return {cid: pool * w // total for cid, w in weights.items()}


@pytest.fixture
def ours(docker_client: Any, rtpengine_image: str) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for container in docker_client.containers.list(all=True, filters={"name": PREFIX}):
        if container.name.startswith(PREFIX):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
    # The pool back to what it is without the cap, for every test after this one.
    run_cli("rt", "rebalance", "--json")


def test_an_agent_from_the_unit_keeps_the_budgets_a_capped_rebalance_set(
    docker_client: Any, ours: list[str], tmp_path: Path
) -> None:
    others = running_agents()
    if others:
        # It reconciles with its own settings on every update event: the capped budgets this test sets
        # would be undone by it, which is the fault the unit's environment prevents, not this agent's.
        pytest.skip(f"an agent this test did not start runs on the host and would undo a capped pool: {others[0]}")
    for name, weight in (("a", 1), ("b", 2)):
        args = ["run", "-c", "--no-wait", "--json", "--name", PREFIX + name, "--media-ports", "10"]
        result = run_cli(*args, "--rt-weight", str(weight), timeout=120)
        assert result.code == 0, result.err + result.out
    uncapped = kernel_pool(docker_client)
    cap = uncapped // 2
    assert cap > 0
    env = {"DOCKER_XMS_CONFIG": str(tmp_path / "none.toml"), "DOCKER_XMS_RT_POOL_US": str(cap)}
    rebalanced = run_cli("rt", "rebalance", "--json", env=env)
    assert rebalanced.code == 0, rebalanced.err
    assert budgets() == shares(cap)

    unit = run_cli("agent", "install", "--print", env=env)
    assert unit.code == 0, unit.err
    port = free_port()
    agent = ServiceAgent(unit.out, "--interval", "1", "--metrics", f"127.0.0.1:{port}")
    try:
        # A start event and three periodic passes after it, counted by the agent itself: each reconciles
        # with the unit's settings.
        third = run_cli("run", "-c", "--no-wait", "--json", "--name", PREFIX + "c", "--media-ports", "10", env=env)
        assert third.code == 0, third.err + third.out
        wait_for(lambda: budgets() == shares(cap), 5, 0.1, "capped shares after the third container")
        passes = wait_for(lambda: _reconciliations(port), 10, 0.1, "the agent's metrics")
        wait_for(lambda: _reconciliations(port) >= passes + 3, 10, 0.1, "three more reconciliations")
        assert budgets() == shares(cap), agent.lines
    finally:
        code = agent.terminate()
    assert code == 0, agent.lines
    assert not [line for line in agent.lines if "reconcile failed" in line], agent.lines

    # The test can tell: an agent without the unit's environment gives out the whole pool again.
    once = run_cli("agent", "--once", env={"DOCKER_XMS_CONFIG": str(tmp_path / "none.toml")})
    assert once.code == 0, once.err
    assert budgets() == shares(uncapped)
    assert shares(uncapped) != shares(cap)
