"""The agent's image recipe and its Swarm global service, as plain values."""

from __future__ import annotations

import itertools
import re
import tomllib
from pathlib import Path

from docker_xms.adapters.profile_store import list_profiles
from docker_xms.domain import recipes
from docker_xms.domain.agent_service import AgentService, create_command, linger_for, render

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_every_dependency_has_its_debian_package_in_the_agent_image() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower() for dep in deps}
    assert names <= set(recipes.AGENT_PYTHON_PACKAGES), names - set(recipes.AGENT_PYTHON_PACKAGES)
    assert set(recipes.AGENT_PYTHON_PACKAGES.values()) <= set(recipes.AGENT_PACKAGES)


def test_the_recipe_changes_with_any_source_file() -> None:
    one = recipes.recipe_hash(recipes.agent_recipe(recipes.AGENT_PACKAGES, {"a.py": b"x"}))
    other = recipes.recipe_hash(recipes.agent_recipe(recipes.AGENT_PACKAGES, {"a.py": b"y"}))
    assert one != other
    assert one == recipes.recipe_hash(recipes.agent_recipe(recipes.AGENT_PACKAGES, {"a.py": b"x"}))


def test_the_agent_image_runs_docker_xms_with_the_agent_as_default() -> None:
    text = recipes.agent_dockerfile("sha256:abc", {recipes.LABEL_AGENT: "0.1.0"})
    assert text.splitlines()[0] == "FROM sha256:abc"
    assert f"COPY docker_xms {recipes.AGENT_SITE}" in text
    assert 'ENTRYPOINT ["python3", "-m", "docker_xms"]' in text
    assert 'CMD ["agent"]' in text


def test_the_service_is_global_on_the_host_network_with_three_capabilities_and_never_privileged() -> None:
    argv = create_command(AgentService(cgroup_parent="/{{.Node.Hostname}}", rt_pool_us=90000, metrics="0.0.0.0:9477"))
    pairs = list(itertools.pairwise(argv))
    assert ("--mode", "global") in pairs
    assert ("--network", "host") in pairs
    assert [b for a, b in pairs if a == "--cap-add"] == ["NET_ADMIN", "SYS_NICE", "SYS_ADMIN"]
    # The node's /proc, read-only, where the pids its engine reports are: to open a task's gate.
    assert ("--mount", "type=bind,source=/proc,target=/host/proc,readonly") in pairs
    assert ("--env", "DOCKER_XMS_ENGINE_PROC=/host/proc") in pairs
    assert ("--mount", "type=bind,source=/sys/fs/cgroup,target=/sys/fs/cgroup") in pairs
    assert ("--mount", "type=bind,source=/var/run/docker.sock,target=/var/run/docker.sock") in pairs
    assert ("--env", "DOCKER_XMS_CGROUP_PARENT=/{{.Node.Hostname}}") in pairs
    assert ("--env", "DOCKER_XMS_RT_POOL_US=90000") in pairs
    assert not any("privileged" in a for a in argv)
    # It lingers while a drained node's media servers stop, and Swarm waits a little longer for it.
    assert argv[-6:] == [recipes.AGENT_IMAGE, "agent", "--linger", "60", "--metrics", "0.0.0.0:9477"]
    assert ("--stop-grace-period", "70s") in pairs


def test_the_printed_command_is_one_option_a_line() -> None:
    text = render(AgentService())
    lines = text.splitlines()
    assert lines[0] == "docker service create \\"
    assert lines[-1].strip() == f"{recipes.AGENT_IMAGE} agent --linger 60"
    assert all(line.endswith(" \\") for line in lines[:-1])


def test_the_agent_lingers_longer_than_the_slowest_profile_drains() -> None:
    profiles = list_profiles()
    longest = max(p.drain.grace_s for p in profiles)
    assert longest == 60  # the sip profile's grace
    # Its stop (grace + the engine's 10 s) ends, and its rules go, before the agent leaves.
    assert linger_for(profiles) == 90
    assert linger_for([]) == 60
    assert AgentService(linger_s=linger_for(profiles)).stop_grace_s == 100
