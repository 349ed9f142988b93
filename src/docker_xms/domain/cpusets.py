"""CPU sets as the unit of real-time share: housekeeping CPUs for the host, the others for media containers.

Where per-group real-time budgets do not exist (cgroup v2, stock kernels), a budget cannot keep one media
server's runaway thread from delaying the others: CPUs of their own can. The host keeps its housekeeping CPUs
(the lowest numbers: CPU 0 takes most interrupts); the media CPUs are divided among the running media
containers by weight, each on CPUs no other one uses where there are enough, else each on one CPU shared
with as few others as possible (or the next `run` refused, as `cpus_when_short` says). Pure: the plan is
applied through the engine (its `--cpuset-cpus`, kept across restarts).

On a kernel with real-time group scheduling a container still needs a budget: its share of the pool is what
its CPUs are of the media CPUs (a CPU shared by k containers counts 1/k for each), so that the budgets add up
to the pool like the weighted ones do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from docker_xms.errors import BadInput

RtModeSetting = Literal["auto", "budgets", "cpus"]
RT_MODE_SETTINGS: tuple[RtModeSetting, ...] = ("auto", "budgets", "cpus")
WhenShort = Literal["share", "refuse"]
WHEN_SHORT: tuple[WhenShort, ...] = ("share", "refuse")
# Budget weights stand for CPU shares in this many parts per CPU (a CPU shared by 3: 333 each).
SHARE_PARTS = 1000


# Above any kernel's NR_CPUS (8192 at most today): a list naming more is not read.
MAX_CPUS = 1 << 16


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """A kernel CPU list ("0-3,6", as /sys/devices/system/cpu/online and cpuset.cpus write it)."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.strip().split(","))):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise BadInput(f"{text.strip()!r} is not a CPU list such as 0-3,6.")
        first, last = int(low), int(high or low)
        if last < first or last >= MAX_CPUS:
            raise BadInput(f"{text.strip()[:64]!r} is not a CPU list such as 0-3,6.")
        out.update(range(first, last + 1))
    return tuple(sorted(out))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """The kernel's form of a CPU list: runs as ranges, "1-3,5"."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class CpuLayout:
    """The host's CPUs split into the host's own and those for media containers."""

    housekeeping: tuple[int, ...]
    media: tuple[int, ...]
    when_short: WhenShort = "share"


def layout(online: Sequence[int], housekeeping: int, when_short: WhenShort = "share") -> CpuLayout:
    """Housekeeping on the lowest `housekeeping` CPUs, media on the rest; refused when none is left."""
    cpus = tuple(sorted(set(online)))
    if housekeeping < 0:
        raise BadInput(f"housekeeping_cpus must be 0 or more, not {housekeeping}.")
    if len(cpus) <= housekeeping:
        raise BadInput(
            f"This host has {len(cpus)} CPU(s) and housekeeping_cpus is {housekeeping}: no CPU is left for media "
            "containers; lower housekeeping_cpus or use rt_mode = auto."
        )
    return CpuLayout(cpus[:housekeeping], cpus[housekeeping:], when_short)


@dataclass(frozen=True)
class CpuPlan:
    """Each member's CPUs, and how many members each media CPU carries."""

    cpus: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    sharers: Mapping[int, int] = field(default_factory=dict)

    def text(self, key: str) -> str:
        return format_cpu_list(self.cpus.get(key, ()))

    def share_weight(self, key: str) -> int:
        """The member's CPUs as a budget weight: SHARE_PARTS per CPU it has alone, divided where shared."""
        return max(1, sum(SHARE_PARTS // self.sharers[cpu] for cpu in self.cpus.get(key, ())))


def plan(
    cpu_layout: CpuLayout,
    members: Sequence[tuple[str, int]],
    current: Mapping[str, tuple[int, ...]] | None = None,
) -> CpuPlan:
    """The media CPUs divided among `members` ((key, weight), in a stable order: the first are served first).
    Enough CPUs: each member gets CPUs of its own, at least one, the rest by weight (largest remainder). Too
    few: each member one CPU, the members spread so that no CPU carries more than one above another.

    A member keeps what it holds now (`current`) wherever the division allows, so that a container arriving
    or leaving moves no other one's threads off their CPUs; only the CPUs that must change do.
    """
    media = cpu_layout.media
    if not members:
        return CpuPlan()
    held = {key: tuple(cpu for cpu in (current or {}).get(key, ()) if cpu in media) for key, _ in members}
    if len(members) > len(media):
        cpus = _shared(media, [key for key, _ in members], held)
    else:
        cpus = _exclusive(media, members, held)
    sharers: dict[int, int] = {}
    for taken in cpus.values():
        for cpu in taken:
            sharers[cpu] = sharers.get(cpu, 0) + 1
    return CpuPlan(cpus, sharers)


def _exclusive(
    media: tuple[int, ...], members: Sequence[tuple[str, int]], held: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """CPUs of their own: each member keeps as many of its CPUs as its count allows, then takes free ones."""
    counts = dict(zip((key for key, _ in members), _counts([weight for _, weight in members], len(media)), strict=True))
    taken: set[int] = set()
    cpus: dict[str, list[int]] = {}
    for key, _ in members:
        kept = [cpu for cpu in held[key] if cpu not in taken][: counts[key]]
        cpus[key] = kept
        taken.update(kept)
    free = [cpu for cpu in media if cpu not in taken]
    for key, _ in members:
        while len(cpus[key]) < counts[key]:
            cpus[key].append(free.pop(0))
    return {key: tuple(sorted(chosen)) for key, chosen in cpus.items()}


def _shared(
    media: tuple[int, ...], keys: Sequence[str], held: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """One CPU each, no CPU carrying more than one member above another: members keep their CPU while it is
    below the even load, then (up to as many CPUs as may carry one more) at it; the rest go to the least loaded."""
    low, extra = divmod(len(keys), len(media))
    load = dict.fromkeys(media, 0)
    own = {key: held[key][0] for key in keys if held[key]}
    chosen: dict[str, int] = {}
    for key, cpu in own.items():
        if load[cpu] < low:
            chosen[key] = cpu
            load[cpu] += 1
    for key, cpu in own.items():
        above = sum(1 for n in load.values() if n > low)
        if key not in chosen and load[cpu] == low and above < extra:
            chosen[key] = cpu
            load[cpu] += 1
    for key in keys:
        if key not in chosen:
            cpu = min(media, key=lambda c: (load[c], c))
            chosen[key] = cpu
            load[cpu] += 1
    return {key: (chosen[key],) for key in keys}


def _counts(weights: Sequence[int], total: int) -> list[int]:
    """`total` CPUs split in proportion to the weights, at least one each (len(weights) <= total): each
    its whole part, then the CPUs left to those furthest below their exact share (the first on a tie)."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    counts = [max(1, int(x)) for x in exact]
    while sum(counts) > total:
        over = max((i for i in range(len(counts)) if counts[i] > 1), key=lambda i: counts[i] - exact[i])
        counts[over] -= 1
    while sum(counts) < total:
        under = max(range(len(counts)), key=lambda i: (exact[i] - counts[i], -i))
        counts[under] += 1
    return counts


def shortage(cpu_layout: CpuLayout, running: int) -> str | None:
    """Why one more media container is refused, where the setting says so and its CPUs would be shared."""
    if cpu_layout.when_short != "refuse" or running < len(cpu_layout.media):
        return None
    return (
        f"All {len(cpu_layout.media)} media CPU(s) ({format_cpu_list(cpu_layout.media)}) are taken by {running} "
        "media container(s) and cpus_when_short is refuse: stop one, lower housekeeping_cpus, or set "
        "cpus_when_short = share."
    )
