"""The runaway watchdog: how long a media server's real-time thread may run without blocking.

The kernel's RLIMIT_RTTIME counts, per thread at SCHED_FIFO or SCHED_RR, the CPU time used since it last
slept. At the soft limit the kernel sends SIGXCPU (which ends a process that does not handle it), at the
hard limit SIGKILL; systemd inside the container then restarts the server. A media thread sleeps every
packet time (20 ms): one that runs half a second without blocking spins, and would hold its CPU, and on a
host without per-group budgets every other server's threads, for as long as the kernel lets it.

The engine sets the limit on the container's first process (`--ulimit rttime`, microseconds), whence every
process in the container inherits it; lowering a limit needs no privilege.

When the kernel stops a server, systemd inside says so in the container's journal ("UNIT: Main process
exited, code=killed, status=24/XCPU"): `rt status` and the agent read those lines (watchdog_stops), and
nothing else of what the container prints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

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


# What the journal is asked for, inside the container (`journalctl -o short-unix`, since a time): only lines
# with the kernel's signal, the last few, so a chatty or hostile container cannot make the answer large.
STOPS_SHOWN = 20
JOURNAL_QUERY = (
    'journalctl --no-pager -q -o short-unix --since "@$1" 2>/dev/null | grep -F "status=24/XCPU" | tail -n '
    + str(STOPS_SHOWN)
)
_STOP_LINE = re.compile(
    r"(\d{1,12}\.\d{1,6}) \S{1,64} systemd\[1\]: ([A-Za-z0-9@._:\\-]{1,128}): "
    r"Main process exited, code=(?:killed|dumped), status=24/XCPU"
)


@dataclass(frozen=True)
class WatchdogStop:
    """A server process the kernel stopped at its RLIMIT_RTTIME (SIGXCPU), as systemd inside logged it."""

    unit: str
    at: float  # seconds since the epoch


def watchdog_stops(journal: str) -> list[WatchdogStop]:
    """The stops in journal lines (JOURNAL_QUERY's output), oldest first; any other line is ignored."""
    stops = []
    for line in journal.splitlines()[-STOPS_SHOWN:]:
        found = _STOP_LINE.fullmatch(line.strip())
        if found:
            stops.append(WatchdogStop(unit=found.group(2), at=float(found.group(1))))
    return sorted(stops, key=lambda stop: stop.at)


def engine_time(stamp: str) -> float | None:
    """Seconds since the epoch of an engine's timestamp ("2026-12-07T18:49:22.123456789Z"); None if unreadable."""
    found = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", stamp.strip())
    if found is None:
        return None
    zone = "+00:00" if found.group(3) == "Z" else found.group(3)
    try:
        whole = datetime.fromisoformat(found.group(1) + zone).timestamp()
    except ValueError:
        return None
    return whole + float("0." + (found.group(2) or "0"))


def stops_text(stops: int) -> str:
    """How `rt status` adds them to the watchdog: "" for none."""
    return "" if stops <= 0 else f", {stops} stop" + ("s" if stops > 1 else "")
