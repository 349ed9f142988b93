"""The agent as a Swarm global service: one task per node, seeing that node's engine, cgroups and netfilter.

Swarm services have no --privileged and no --cgroup-parent; what the agent needs is given one item each:
the node's network namespace (host network: its DNAT rules belong there), the engine's socket, the node's
cgroup tree writable (budgets are cgroup files), NET_ADMIN for iptables and SYS_NICE to check real-time
scheduling, and the node's /proc read-only with SYS_ADMIN to open the gate of a media server that Swarm
started (its own `name=systemd` subtree made writable in its mount namespace: adapters/cgroupns.py; the
engine's socket gives the agent the node already, so SYS_ADMIN adds no reach). Engines from 20.10 take capabilities for services (`docker service create --cap-add`).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from docker_xms.domain.compose import STOP_MARGIN_S
from docker_xms.domain.profiles import Profile
from docker_xms.domain.recipes import AGENT_IMAGE

SERVICE_NAME = "docker-xms-agent"
SERVICE_LABEL = "io.docker-xms.agent-service"
CAPABILITIES = ("NET_ADMIN", "SYS_NICE", "SYS_ADMIN")
ENGINE_SOCKET = "/var/run/docker.sock"
CGROUP_TREE = "/sys/fs/cgroup"
# The node's /proc, where the pids its engine reports are (the task's own /proc shows only its own).
NODE_PROC = "/proc"
PROC_TARGET = "/host/proc"
# The node's /run (docker-xms's locks and the plans of adopted containers, under /run/docker-xms) and its
# /var/lib (docker-xms's records, under /var/lib/docker-xms): shared with the CLI on that node, so that
# the two take one lock and see one set of ranges. Whole directories, because a bind's source must exist
# on every node, and these two always do.
NODE_RUN = "/run"
NODE_VAR_LIB = "/var/lib"
STATE_TARGET = "/host/var/lib"
# At least this long, and longer than the slowest media server's stop with its drain (see linger_for).
LINGER_S = 60.0
# After a drained server's stop: time for the engine's events and the rules' removal.
RULES_MARGIN_S = 20


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False

    def flag(self) -> str:
        return f"type=bind,source={self.source},target={self.target}" + (",readonly" if self.read_only else "")


@dataclass(frozen=True)
class AgentService:
    """What `docker service create` is given; values may hold Swarm templates such as {{.Node.Hostname}}."""

    image: str = AGENT_IMAGE
    name: str = SERVICE_NAME
    # The nodes' engine --cgroup-parent, when not the default; a template when it differs per node.
    cgroup_parent: str = ""
    rt_pool_us: int | None = None
    # The agent's --metrics ([ADDR:]PORT): on the host network, the node's own address and port.
    metrics: str | None = None
    interval_s: float | None = None
    # Draining a node stops its agent with its media servers, which drain for up to their grace: the
    # agent lingers that long so that their rules go with them, and Swarm gives it a few seconds more.
    linger_s: float = LINGER_S

    @property
    def stop_grace_s(self) -> float:
        return self.linger_s + 10

    @property
    def mounts(self) -> tuple[Mount, ...]:
        return (
            Mount(ENGINE_SOCKET, ENGINE_SOCKET),
            Mount(CGROUP_TREE, CGROUP_TREE),
            Mount(NODE_RUN, NODE_RUN),
            Mount(NODE_VAR_LIB, STATE_TARGET),
            Mount(NODE_PROC, PROC_TARGET, read_only=True),
        )

    @property
    def env(self) -> dict[str, str]:
        out = {"DOCKER_XMS_STATE_DIR": f"{STATE_TARGET}/docker-xms", "DOCKER_XMS_ENGINE_PROC": PROC_TARGET}
        if self.cgroup_parent:
            out["DOCKER_XMS_CGROUP_PARENT"] = self.cgroup_parent
        if self.rt_pool_us is not None:
            out["DOCKER_XMS_RT_POOL_US"] = str(self.rt_pool_us)
        return out

    @property
    def args(self) -> tuple[str, ...]:
        """The agent's own command line inside the task (after the image's entrypoint, docker-xms)."""
        out = ["agent", "--linger", f"{self.linger_s:g}"]
        if self.interval_s is not None:
            out += ["--interval", f"{self.interval_s:g}"]
        if self.metrics is not None:
            out += ["--metrics", self.metrics]
        return tuple(out)

    @property
    def labels(self) -> dict[str, str]:
        return {SERVICE_LABEL: "1"}


def linger_for(profiles: Iterable[Profile]) -> float:
    """How long a stopped agent stays while its node's media servers stop: the longest drain grace of
    the profiles it may meet, the engine's stop margin after it, and time for the rules to go."""
    longest = max((p.drain.grace_s for p in profiles), default=0)
    return float(max(LINGER_S, longest + STOP_MARGIN_S + RULES_MARGIN_S))


def create_command(service: AgentService) -> list[str]:
    """The `docker service create` command line that makes the service (what `agent service` prints)."""
    argv = ["docker", "service", "create", "--name", service.name, "--mode", "global", "--network", "host"]
    argv += ["--stop-grace-period", f"{service.stop_grace_s:g}s"]
    for mount in service.mounts:
        argv += ["--mount", mount.flag()]
    for cap in CAPABILITIES:
        argv += ["--cap-add", cap]
    for key, value in service.env.items():
        argv += ["--env", f"{key}={value}"]
    for key, value in service.labels.items():
        argv += ["--label", f"{key}={value}"]
    return [*argv, service.image, *service.args]


def render(service: AgentService) -> str:
    """The command, one option per line, ready to paste into a shell on a manager."""
    argv = create_command(service)
    head = shlex.join(argv[:3])
    rest = argv[3:]
    lines = []
    i = 0
    while i < len(rest):
        item = rest[i]
        if item.startswith("--") and i + 1 < len(rest) and item != service.image:
            lines.append(f"{shlex.quote(item)} {shlex.quote(rest[i + 1])}")
            i += 2
        else:
            lines.append(shlex.join(rest[i:]))
            break
    return " \\\n  ".join([head, *lines]) + "\n"
