"""The host's settings for docker-xms, read once per process and handed to every use case.

They come from a TOML file (`/etc/docker-xms/config.toml`, or the file DOCKER_XMS_CONFIG names), with
environment variables overriding it. The agent a command installs gets the same values (its unit
carries the overrides in force), so a budget cap or a lock path cannot differ between the commands and
the agent that reconciles after them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from docker_xms.domain.pool import DEFAULT_ADOPT, DEFAULT_MEDIA_PORT_POOL

DEFAULT_CONFIG = Path("/etc/docker-xms/config.toml")
CONFIG_ENV = "DOCKER_XMS_CONFIG"
DEFAULT_LOCK = Path("/run/docker-xms/host.lock")
DEFAULT_SYS = Path("/sys")

# `ps --json` imports this module: typing is only for the type checker (its import costs the listing ~2 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    Kind = Literal["int", "str", "path", "paths", "bool"]


@dataclass(frozen=True)
class Key:
    """One setting: its name in the file, the environment variable that overrides it, its type."""

    name: str
    env: str
    kind: Kind
    help: str


KEYS: tuple[Key, ...] = (
    Key("rt_pool_us", "DOCKER_XMS_RT_POOL_US", "int", "upper bound on the real-time pool, us per period"),
    Key("cgroup_parent", "DOCKER_XMS_CGROUP_PARENT", "str", "the engine's --cgroup-parent, when not the default"),
    Key("cgroup_driver", "DOCKER_XMS_CGROUP_DRIVER", "str", "cgroupfs or systemd, when not the engine's own"),
    Key("lock_path", "DOCKER_XMS_LOCK", "path", "the host-wide lock every change holds"),
    Key("sys_root", "DOCKER_XMS_SYS_ROOT", "path", "where /sys is (a copy of a host's tree, for rt doctor)"),
    Key("proc_root", "DOCKER_XMS_PROC_ROOT", "path", "where /proc is"),
    Key("engine_proc", "DOCKER_XMS_ENGINE_PROC", "path", "where the engine's processes are seen (its /proc)"),
    Key("boot_root", "DOCKER_XMS_BOOT_ROOT", "path", "where /boot is"),
    Key("profile_path", "DOCKER_XMS_PROFILE_PATH", "paths", "directories of profile files, searched first"),
    Key("docker_host", "DOCKER_HOST", "str", "the engine's address, as for the docker CLI"),
    Key("start_agent", "DOCKER_XMS_START_AGENT", "bool", "whether run starts an agent when none runs"),
    Key("agent_lock", "DOCKER_XMS_AGENT_LOCK", "path", "the lock a running agent holds; run looks at it"),
    Key("state_dir", "DOCKER_XMS_STATE_DIR", "path", "where docker-xms keeps what it decided for its containers"),
    Key("media_port_pool", "DOCKER_XMS_MEDIA_PORT_POOL", "str", "the host ports media ranges are forwarded from"),
    Key("adopt", "DOCKER_XMS_ADOPT", "str", "which containers others start are adopted: compose, swarm, docker, none"),
    Key("labels", "DOCKER_XMS_LABELS", "str", "labels every container run creates carries too: KEY=VALUE,KEY=VALUE"),
    Key("rt_mode", "DOCKER_XMS_RT_MODE", "str", "auto, budgets or cpus: how media containers share real-time CPU"),
    Key("housekeeping_cpus", "DOCKER_XMS_HOUSEKEEPING_CPUS", "int", "CPUs the host keeps in cpus mode (the lowest)"),
    Key("cpus_when_short", "DOCKER_XMS_CPUS_WHEN_SHORT", "str", "share or refuse, when media CPUs run out"),
    Key("advertise", "DOCKER_XMS_ADVERTISE", "str", "the address this node's adopted servers advertise: host or IPv4"),
    Key("plan_wait_s", "DOCKER_XMS_PLAN_WAIT_S", "int", "seconds a replica's server waits for its plan"),
    Key("start_without_plan", "DOCKER_XMS_START_WITHOUT_PLAN", "bool", "whether it starts when none came"),
)
KEYS_BY_NAME = {key.name: key for key in KEYS}


@dataclass(frozen=True)
class Settings:
    rt_pool_us: int | None = None
    cgroup_parent: str = ""
    # None: the driver the engine reports.
    cgroup_driver: str | None = None
    lock_path: Path = DEFAULT_LOCK
    sys_root: Path = DEFAULT_SYS
    proc_root: Path = Path("/proc")
    # The /proc of the engine's pid namespace, where the pids it reports are (the agent service mounts its node's).
    engine_proc: Path = Path("/proc")
    boot_root: Path = Path("/boot")
    # Searched before the user's own profile directory (below).
    profile_path: tuple[Path, ...] = ()
    # None: the SDK's default (DOCKER_HOST, else the local socket).
    docker_host: str | None = None
    start_agent: bool = True
    agent_lock: Path = Path("/run/docker-xms/agent.lock")
    # What docker-xms decided for the containers it created (forwards, weight, host ranges), kept across reboots.
    state_dir: Path = Path("/var/lib/docker-xms")
    media_port_pool: str = DEFAULT_MEDIA_PORT_POOL
    adopt: str = DEFAULT_ADOPT
    # Labels of the user's own on every container `run` creates, before those of its --label options.
    labels: str = ""
    # How media containers share real-time CPU (domain/cpusets.py): budgets per group, CPUs of their own, or
    # auto (budgets where the kernel has them, CPUs elsewhere, as today on a host with one CPU).
    rt_mode: str = "auto"
    housekeeping_cpus: int = 1
    cpus_when_short: str = "share"
    # The address adopted servers advertise: "host" (this node's default-route address) or an IPv4 address.
    advertise: str = "host"
    # How long a server in an image docker-xms built waits for its plan, and whether it starts without one
    # (domain/plan_unit.py; `docker-xms compose` puts both in the replicas' environment).
    plan_wait_s: int = 60
    start_without_plan: bool = True
    # Where the settings were read from, so that an agent can be told to read the same.
    config_path: Path = DEFAULT_CONFIG
    # The user's profile directory ($XDG_CONFIG_HOME/docker-xms/profiles).
    user_profiles: Path | None = None
    # Environment variables that overrode the file, by variable, as values an agent's unit can carry.
    overrides: tuple[tuple[str, str], ...] = ()

    @property
    def roots(self) -> tuple[Path, Path, Path]:
        return self.sys_root, self.proc_root, self.boot_root

    @property
    def real_host(self) -> bool:
        """Whether the cgroup tree read is this host's own, not a copy given by sys_root."""
        return self.sys_root == DEFAULT_SYS

    @property
    def profile_dirs(self) -> tuple[Path, ...]:
        return self.profile_path + ((self.user_profiles,) if self.user_profiles else ())

    @property
    def label_pairs(self) -> tuple[str, ...]:
        return tuple(filter(None, (part.strip() for part in self.labels.split(","))))

    def environment(self) -> dict[str, str]:
        """What a process needs in its environment to read exactly these settings again."""
        return {CONFIG_ENV: str(self.config_path), **dict(self.overrides)}
