"""The runaway watchdog: how long a media server's real-time thread may run without blocking.

The kernel's RLIMIT_RTTIME counts, per thread at SCHED_FIFO or SCHED_RR, the CPU time used since it last
slept. At the soft limit the kernel sends SIGXCPU (which ends a process that does not handle it), at the
hard limit SIGKILL; systemd inside the container then restarts the server. A media thread sleeps every
packet time (20 ms): one that runs half a second without blocking spins, and would hold its CPU, and on a
host without per-group budgets every other server's threads, for as long as the kernel lets it.

The engine sets the limit on the container's first process (`--ulimit rttime`, microseconds), whence every
process in the container inherits it; lowering a limit needs no privilege.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# A profile's [realtime] watchdog_ms when it says nothing; 0 turns the watchdog off.
DEFAULT_WATCHDOG_MS = 500
MAX_WATCHDOG_MS = 60_000
# SIGKILL this long after the soft limit's SIGXCPU, for a server that handles SIGXCPU and goes on spinning.
KILL_AFTER_FACTOR = 2


@dataclass(frozen=True)
class RtTimeLimit:
    """RLIMIT_RTTIME's soft and hard limits, in microseconds."""

    soft_us: int
    hard_us: int

    @property
    def ms(self) -> float:
        return self.soft_us / 1000


def rttime_limit(watchdog_ms: int) -> RtTimeLimit | None:
    """The limits for a profile's watchdog; None when it is off."""
    if watchdog_ms <= 0:
        return None
    soft = watchdog_ms * 1000
    return RtTimeLimit(soft, soft * KILL_AFTER_FACTOR)


def watchdog_text(soft_us: int) -> str:
    """How `rt status` shows a container's watchdog (its RLIMIT_RTTIME soft limit; 0: none)."""
    return f"{soft_us / 1000:g} ms" if soft_us > 0 else "off"


def fair_server_text(reserve_ns: Mapping[int, int]) -> str:
    """The fair server's reserve per CPU in one phrase: "50 ms per period on CPU 0-1", or per CPU where they differ."""
    values = sorted(set(reserve_ns.values()))
    if len(values) == 1:
        cpus = sorted(reserve_ns)
        return f"{values[0] / 1e6:g} ms per period on CPU {cpus[0]}" + (f"-{cpus[-1]}" if len(cpus) > 1 else "")
    return ", ".join(f"CPU {cpu} {ns / 1e6:g} ms" for cpu, ns in sorted(reserve_ns.items()))
