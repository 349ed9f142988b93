"""Real-time CPU budgets: who gets how many microseconds per period, and in which order to write them.

The kernel (cgroup v1 with CONFIG_RT_GROUP_SCHED) checks every single write to cpu.rt_runtime_us:
the children of a group may together hold at most what the group holds, no group may hold more than
its own parent allows, and a group that holds real-time threads cannot be set to 0. A rebalance is
therefore a sequence of writes, each of which must leave the kernel in a state it accepts.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from docker_xms.errors import BadInput, XmsError

PERIOD_US = 1_000_000
MIN_RUNTIME_US = 1000
# The keys of a plan that are not container ids (64 hex digits, so neither can be taken for one): the
# engine's parent group, and the container about to be created, whose write is its creation with that
# budget (a share too small for it names it in the refusal's sentence).
PARENT = "parent"
ARRIVING = "(new container)"
UNLIMITED = -1


class BudgetImpossible(XmsError):
    """The real-time budget cannot be shared out so that every container gets a usable share."""


@dataclass(frozen=True)
class Member:
    key: str
    weight: int = 1

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise BadInput(f"The real-time weight of {self.key} is {self.weight}; use a whole number >= 1.")


@dataclass(frozen=True)
class Write:
    target: str
    value: int


def to_period(runtime_us: int, period_us: int, to_period_us: int = PERIOD_US) -> int:
    """A runtime per period_us expressed per to_period_us.

    Rounds up, because the kernel compares ratios: rounding down could make a foreign group look
    smaller than it is and a plan built on it would be refused.
    """
    if runtime_us == UNLIMITED:
        return to_period_us
    return -(-runtime_us * to_period_us // period_us)


def capacity(root_runtime_us: int, siblings_us: int, period_us: int = PERIOD_US) -> int:
    """What the parent can hold: the root's runtime (-1: the whole period) minus the parent's siblings."""
    root = period_us if root_runtime_us == UNLIMITED else root_runtime_us
    return max(0, root - siblings_us)


def compute_pool(capacity_us: int, foreign_us: int, cap_us: int | None = None) -> int:
    """The runtime the managed containers may share inside the parent."""
    if cap_us is not None and cap_us < 0:
        raise BadInput(f"A real-time budget cap of {cap_us} us makes no sense; give a number >= 0.")
    pool = capacity_us - foreign_us
    if cap_us is not None:
        pool = min(pool, cap_us)
    return max(0, pool)


class Group(Protocol):
    """A child group of the engine's parent as its files show it (`cgroup_types.GroupRuntime` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def runtime_us(self) -> int: ...

    @property
    def period_us(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class Room:
    """What the engine's parent can hold, who holds what in it, and the pool the managed containers share."""

    capacity_us: int
    # What the parent's siblings hold: it limits what the parent can hold.
    siblings_us: int
    pool_us: int
    # The managed containers' groups, by group name: the runtime their file holds.
    held: Mapping[str, int]
    # Every other group that holds runtime, by group name: its runtime per PERIOD_US.
    foreign: Mapping[str, int]

    @property
    def foreign_us(self) -> int:
        return sum(self.foreign.values())


def room(
    root_runtime_us: int,
    siblings_us: int,
    children: Iterable[Group],
    ours: Container[str],
    cap_us: int | None = None,
) -> Room:
    """The parent's room from its files: the root's runtime, its siblings' and its children's, of which
    those named in `ours` are the managed containers' groups."""
    held: dict[str, int] = {}
    foreign: dict[str, int] = {}
    for child in children:
        if child.name in ours:
            held[child.name] = child.runtime_us
            continue
        runtime = to_period(child.runtime_us, child.period_us)
        if runtime > 0:
            foreign[child.name] = runtime
    capacity_us = capacity(root_runtime_us, siblings_us)
    return Room(
        capacity_us=capacity_us,
        siblings_us=siblings_us,
        pool_us=compute_pool(capacity_us, sum(foreign.values()), cap_us),
        held=held,
        foreign=foreign,
    )


def split(pool_us: int, members: Sequence[Member]) -> dict[str, int]:
    """Share the pool in proportion to the weights, rounding each share down."""
    if not members:
        return {}
    keys = [m.key for m in members]
    if len(set(keys)) != len(keys):
        raise BadInput(f"Each container may appear once in a real-time budget; got {keys}.")
    total = sum(m.weight for m in members)
    shares = {m.key: pool_us * m.weight // total for m in members}
    smallest = min(shares, key=lambda k: shares[k])
    if shares[smallest] < MIN_RUNTIME_US:
        raise BudgetImpossible(
            f"{pool_us} us of real-time CPU per second cannot be shared by {len(members)} containers: "
            f"{smallest} would get {shares[smallest]} us, less than the {MIN_RUNTIME_US} us minimum; "
            "stop a real-time container or free budget held by other real-time groups."
        )
    return shares


def plan(
    parent_now: int,
    parent_target: int,
    now: Mapping[str, int],
    target: Mapping[str, int],
    foreign_us: int = 0,
) -> list[Write]:
    """The writes that take the kernel from `now` to `target`, each leaving a state the kernel accepts.

    Keys only in `now` are departing: their cgroups are gone before the plan runs. Keys only in
    `target` are arriving: their write is the creation of their container with that budget.
    """
    if any(value <= 0 for value in target.values()):
        raise BudgetImpossible("Every real-time container needs a budget above 0 us; stop one to make room.")
    needed = sum(target.values()) + foreign_us
    if needed > parent_target:
        raise BudgetImpossible(
            f"The containers' real-time budgets ({needed} us with other real-time groups) exceed "
            f"the {parent_target} us their parent cgroup would hold; lower the budgets or stop a container."
        )
    # Donors shrink first so that the children's sum only falls; then the parent moves, which is safe
    # because the children now hold at most min(now, target) each, within both old and new parent;
    # then receivers grow, each step staying within sum(target) + foreign <= parent_target.
    # Growing before shrinking, or moving the parent first, can each break the sum rule for one write.
    donors = [Write(key, target[key]) for key in sorted(target) if key in now and target[key] < now[key]]
    receivers = [Write(key, target[key]) for key in sorted(target) if target[key] > now.get(key, 0)]
    parent = [Write(PARENT, parent_target)] if parent_target != parent_now else []
    return donors + parent + receivers


def rollback(applied: Sequence[Write], before: Mapping[str, int], parent_before: int) -> list[Write]:
    """The writes that undo `applied` (a prefix of a plan), keeping the kernel's rules after each one.

    Undoing in reverse order walks back through states the kernel already accepted. A member that
    arrived has no previous value to restore: its container must be removed before these writes run,
    which only lowers the children's sum and so keeps every later state acceptable.
    """
    values: dict[str, int] = {PARENT: parent_before, **before}
    undo: list[Write] = []
    for write in applied:
        if write.target in values:
            undo.append(Write(write.target, values[write.target]))
        values[write.target] = write.value
    return list(reversed(undo))
