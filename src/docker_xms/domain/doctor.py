"""Whether real-time scheduling will work for containers on this host, and what to change if not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from docker_xms.domain.rt_mode import GLOBAL, PER_GROUP, V2_RT_GROUP
from docker_xms.domain.watchdog import fair_server_text

if TYPE_CHECKING:
    from docker_xms.domain.rt_mode import RtMode

Level = Literal["ok", "warn", "fail"]

_SYSCTL_FIX = (
    "Set kernel.sched_rt_runtime_us to 950000 (sysctl -w kernel.sched_rt_runtime_us=950000, "
    "and in /etc/sysctl.d/ to keep it after a reboot)."
)
_CAP_FIX = "Give the container CAP_SYS_NICE (--cap-add SYS_NICE); docker-xms adds it to the containers it runs."


class HostRt(Protocol):
    """What the host offers for real-time scheduling, as the cgroup adapter reads it."""

    @property
    def cgroup_version(self) -> int: ...
    @property
    def rt_group_sched(self) -> bool | None: ...
    @property
    def rt_runtime_us(self) -> int: ...
    @property
    def rt_period_us(self) -> int: ...
    @property
    def mode(self) -> RtMode: ...


@dataclass(frozen=True)
class Finding:
    level: Level
    message: str
    fix: str = ""


def diagnose(
    host: HostRt,
    engine_cgroup_driver: str,
    engine_cgroup_version: str,
    parent_runtime: int | None,
    parent_path: str,
) -> list[Finding]:
    findings = _global_limit(host)
    if host.mode == PER_GROUP:
        findings += _per_group(engine_cgroup_driver, engine_cgroup_version, parent_runtime, parent_path)
    elif host.mode == V2_RT_GROUP:
        findings.append(
            Finding(
                "fail",
                "SCHED_FIFO fails inside containers: the kernel has CONFIG_RT_GROUP_SCHED=y on cgroup v2, "
                "where every container's cgroup has a real-time budget of 0 that Docker cannot raise.",
                "Boot with systemd.unified_cgroup_hierarchy=0 so the cpu controller is on cgroup v1 and "
                "docker-xms can give each container a budget, or use a kernel with CONFIG_RT_GROUP_SCHED "
                "not set (Linux 6.16 and later: boot with rt_group_sched=0).",
            )
        )
    elif host.mode == GLOBAL:
        findings += _global_only(host)
    return findings


# Above this, a CPU may sit in an idle state whose exit adds to a media thread's wake-up (C1 exits take ~1-2 us).
QUIET_HOST_LIMIT_US = 20


def idle_findings(driver: str, limit_us: int | None, no_limit_us: int) -> list[Finding]:
    """Whether wake-ups that find a CPU idle can come late: the cpuidle driver and the latency limit held now."""
    if not driver or driver == "none" or limit_us is None:
        return []
    if limit_us <= QUIET_HOST_LIMIT_US:
        return [Finding("ok", f"CPU wake-up latency is held at {limit_us} us (cpuidle driver {driver}).")]
    held = "no limit is held" if limit_us >= no_limit_us else f"the limit held is {limit_us} us"
    vm = ""
    if driver == "haltpoll":  # the paravirtual guest's driver
        vm = " On a virtual machine an idle vCPU is halted and must be scheduled again by the hypervisor."
    return [
        Finding(
            "warn",
            f"CPUs may enter idle states that are slow to leave (cpuidle driver {driver}, {held}): a media "
            f"thread's wake-up that finds its CPU idle comes later when the host is quiet.{vm}",
            "Hold the limit at 0 while media runs: docker-xms agent --cpu-latency-us 0 (or agent install "
            "--cpu-latency-us 0), or a tuned profile such as latency-performance. Idle CPUs then poll.",
        )
    ]


# A systemd container takes a few inotify instances of the host's per-user limit (root's, as the
# containers' root is the host's): at the kernel's default of 128 the 20-odd-th container cannot boot.
INOTIFY_INSTANCES_PER_CONTAINER = 6


def inotify_findings(max_user_instances: int | None, wanted_containers: int = 64) -> list[Finding]:
    """Whether the host lets as many systemd containers boot as a media host runs."""
    if max_user_instances is None:
        return []
    room = max_user_instances // INOTIFY_INSTANCES_PER_CONTAINER
    if room >= wanted_containers:
        return [
            Finding(
                "ok",
                f"fs.inotify.max_user_instances is {max_user_instances}: room for about {room} systemd containers.",
            )
        ]
    return [
        Finding(
            "warn",
            f"fs.inotify.max_user_instances is {max_user_instances}: systemd in a container needs a few, so "
            f"only about {room} systemd containers can boot on this host; the next ones exit at start.",
            "sysctl -w fs.inotify.max_user_instances=1024 (and put it in /etc/sysctl.d/ to keep it).",
        )
    ]


def fair_server_findings(reserve_ns: Mapping[int, int]) -> list[Finding]:
    """The kernel's own guard against runaway real-time threads, where debugfs shows it (6.12 and later)."""
    if not reserve_ns:
        return []
    return [
        Finding(
            "ok",
            f"The fair server keeps {fair_server_text(reserve_ns)} for normal tasks, however busy the real-time "
            "threads are; each container's own runaway watchdog is its profile's [realtime] watchdog_ms.",
        )
    ]


def verdict(findings: Sequence[Finding]) -> bool:
    """Whether containers can run real-time threads on this host."""
    return all(f.level != "fail" for f in findings)


def _global_limit(host: HostRt) -> list[Finding]:
    if host.rt_runtime_us == 0:
        return [
            Finding(
                "fail",
                "The kernel allows no real-time scheduling at all: kernel.sched_rt_runtime_us is 0.",
                _SYSCTL_FIX,
            )
        ]
    if host.rt_runtime_us < 0:
        return [
            Finding(
                "warn",
                "Real-time threads may use every CPU cycle (kernel.sched_rt_runtime_us is -1): "
                "a runaway real-time thread can freeze the host.",
                _SYSCTL_FIX,
            )
        ]
    return [
        Finding(
            "ok",
            f"The host lets real-time threads use {host.rt_runtime_us} us of every {host.rt_period_us} us on each CPU.",
        )
    ]


def _per_group(driver: str, engine_version: str, parent_runtime: int | None, parent_path: str) -> list[Finding]:
    findings = [
        Finding(
            "ok",
            "Each container can get its own real-time budget: the cpu controller is on cgroup v1 and "
            "the kernel has CONFIG_RT_GROUP_SCHED.",
        )
    ]
    if engine_version.strip() not in ("", "1"):
        findings.append(
            Finding(
                "fail",
                f"The Docker engine reports cgroup v{engine_version} while the host's cpu controller is on "
                "v1, so the engine refuses --cpu-rt-runtime.",
                "Run dockerd on the host itself with the cgroup v1 hierarchy "
                "(systemd.unified_cgroup_hierarchy=0 on the kernel command line).",
            )
        )
    where = (
        f"Containers live in {parent_path} (system.slice/docker-<id>.scope with the systemd driver)"
        if driver == "systemd"
        else f"Containers live in {parent_path}"
    )
    if parent_runtime is None:
        findings.append(Finding("ok", f"{where}, which does not exist yet: docker-xms creates it with a budget."))
    elif parent_runtime == 0:
        findings.append(
            Finding(
                "warn",
                f"{where}, which has no real-time budget (0 us), so docker run --cpu-rt-runtime fails "
                "with 'invalid argument'.",
                f"docker-xms sets the budget of {parent_path} itself before it starts a container; "
                "for plain docker run, start dockerd with --cpu-rt-runtime=950000.",
            )
        )
    else:
        findings.append(Finding("ok", f"{where}, which holds {parent_runtime} us of real-time runtime."))
    findings.append(Finding("ok", "Containers also need CAP_SYS_NICE to use SCHED_FIFO.", _CAP_FIX))
    return findings


def _global_only(host: HostRt) -> list[Finding]:
    refusal = (
        'Docker refuses --cpu-rt-runtime on cgroup v2 ("kernel does not support CPU real-time scheduler")'
        if host.cgroup_version == 2
        else "Docker refuses --cpu-rt-runtime on a kernel without CONFIG_RT_GROUP_SCHED"
    )
    findings = [
        Finding(
            "ok",
            "SCHED_FIFO works in a container with CAP_SYS_NICE, without a per-container budget: all "
            "real-time threads share the host's limit (kernel.sched_rt_runtime_us).",
            _CAP_FIX,
        ),
        Finding(
            "warn",
            f"{refusal}, so one container's runaway real-time thread can use the whole host limit.",
            "For per-container budgets boot with systemd.unified_cgroup_hierarchy=0 on a kernel with "
            "CONFIG_RT_GROUP_SCHED=y; otherwise keep kernel.sched_rt_runtime_us below the period.",
        ),
    ]
    if host.cgroup_version == 2 and host.rt_group_sched is None:
        findings.append(
            Finding(
                "warn",
                "Cannot tell whether the kernel has CONFIG_RT_GROUP_SCHED (no /proc/config.gz or "
                "/boot/config-<release>); if it has, SCHED_FIFO fails inside containers.",
                "Check the kernel's build options: CONFIG_RT_GROUP_SCHED must be unset on cgroup v2.",
            )
        )
    return findings
