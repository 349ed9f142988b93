"""The kernel's CPU wake-up latency limit (PM QoS, /dev/cpu_dma_latency) and the CPU idle driver.

While a process holds /dev/cpu_dma_latency open with a value written to it, the kernel keeps every CPU out of
idle states that take longer than that many microseconds to leave; closing the file releases the request.
On a virtual machine a halted vCPU is descheduled by the hypervisor, and waking it again adds tens to hundreds
of microseconds to every wake-up that finds the CPU idle; a limit of 0 makes idle CPUs poll instead.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from docker_xms.errors import BadInput, XmsError

DEVICE = Path("/dev/cpu_dma_latency")
# The value the kernel reports while nobody asks for a limit (PM_QOS_CPU_LATENCY_DEFAULT_VALUE).
NO_LIMIT_US = 2_000_000_000


@dataclass(frozen=True)
class IdleState:
    """What can make wake-ups slow when the host is quiet."""

    driver: str  # the cpuidle driver ("haltpoll", "intel_idle", "acpi_idle", ...), "" when there is none
    limit_us: int | None  # the limit in force now; NO_LIMIT_US when none; None when it cannot be read


def read_idle_state(sys_root: Path = Path("/sys"), device: Path = DEVICE) -> IdleState:
    try:
        driver = (sys_root / "devices/system/cpu/cpuidle/current_driver").read_text().strip()
    except OSError:
        driver = ""
    try:
        with device.open("rb") as f:
            limit: int | None = struct.unpack("i", f.read(4))[0]
    except (OSError, struct.error):
        limit = None
    return IdleState(driver, limit)


class CpuLatencyHold:
    """Hold the CPU wake-up latency limit at `limit_us` while the object is open (a context manager)."""

    def __init__(self, limit_us: int, device: Path = DEVICE) -> None:
        if not 0 <= limit_us < NO_LIMIT_US:
            raise BadInput(f"A CPU wake-up latency limit is 0 or more microseconds, not {limit_us}.")
        self.limit_us = limit_us
        self.device = device
        self._fd: int | None = None

    def __enter__(self) -> CpuLatencyHold:
        try:
            fd = os.open(self.device, os.O_WRONLY)
        except OSError as exc:
            raise XmsError(f"Cannot open {self.device} to limit CPU wake-up latency: {exc.strerror}.") from None
        try:
            os.write(fd, struct.pack("i", self.limit_us))
        except OSError as exc:
            os.close(fd)
            raise XmsError(
                f"The kernel refused a CPU wake-up latency limit of {self.limit_us} us: {exc.strerror}."
            ) from None
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the kernel drops the request with the last close
            self._fd = None
