"""The checks the kernel makes on cpu.rt_runtime_us writes, as a model the budget plans are tested against.

cgroup v1 with CONFIG_RT_GROUP_SCHED checks every single write: the children of a group may together hold at
most what the group holds, no group may hold more than its own parent allows, and a group that holds
real-time threads cannot be set to 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from docker_xms.domain.budget import PARENT, PERIOD_US, Write


class KernelRefusal(Exception):
    """A write that the kernel would refuse (what cpu.rt_runtime_us answers with EINVAL or EBUSY)."""


@dataclass
class KernelModel:
    """The checks the kernel makes on cpu.rt_runtime_us writes inside one parent cgroup.

    `capacity` is what the parent itself may hold (its parent's runtime minus its siblings);
    `foreign` is runtime held by children that are not managed here.
    """

    capacity: int
    parent: int = 0
    children: dict[str, int] = field(default_factory=dict)
    foreign: int = 0
    holding_rt: set[str] = field(default_factory=set)
    period: int = PERIOD_US
    # Containers start their real-time threads as soon as they run, so new children hold RT tasks.
    new_children_hold_rt: bool = True

    def write(self, write: Write) -> None:
        if not 0 <= write.value <= self.period:
            raise KernelRefusal(f"{write.value} us is outside 0..{self.period} for {write.target}.")
        if write.target == PARENT:
            if write.value > self.capacity:
                raise KernelRefusal(f"The parent cannot hold {write.value} us: only {self.capacity} us fit.")
            if self.used() > write.value:
                raise KernelRefusal(f"The parent cannot shrink to {write.value} us: children hold {self.used()}.")
            self.parent = write.value
            return
        if write.value == 0 and write.target in self.holding_rt:
            raise KernelRefusal(f"{write.target} holds real-time threads and cannot be set to 0.")
        used = self.used() - self.children.get(write.target, 0) + write.value
        if used > self.parent:
            raise KernelRefusal(f"{write.target} cannot get {write.value} us: children would hold {used}.")
        if write.target not in self.children and self.new_children_hold_rt:
            self.holding_rt.add(write.target)
        self.children[write.target] = write.value

    def apply(self, writes: Iterable[Write]) -> None:
        for write in writes:
            self.write(write)

    def vanish(self, key: str) -> None:
        """The container's cgroup is removed with it, freeing its runtime."""
        self.children.pop(key, None)
        self.holding_rt.discard(key)

    def used(self) -> int:
        return sum(self.children.values()) + self.foreign
