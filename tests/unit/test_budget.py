from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docker_xms.domain.budget import (
    MIN_RUNTIME_US,
    PARENT,
    BudgetImpossible,
    Member,
    Write,
    capacity,
    compute_pool,
    plan,
    rollback,
    room,
    split,
    to_period,
)
from docker_xms.errors import BadInput, XmsError
from tests.kernel_model import KernelModel, KernelRefusal

GLOBAL = 950_000


def test_one_container_gets_the_whole_budget() -> None:
    assert split(GLOBAL, [Member("a")]) == {"a": 950_000}


def test_two_containers_get_475000_each() -> None:
    assert split(GLOBAL, [Member("a"), Member("b")]) == {"a": 475_000, "b": 475_000}


def test_three_containers_get_316666_each() -> None:
    assert split(GLOBAL, [Member("a"), Member("b"), Member("c")]) == {"a": 316_666, "b": 316_666, "c": 316_666}


def test_weights_share_in_proportion_rounding_down() -> None:
    assert split(GLOBAL, [Member("a", 2), Member("b", 1)]) == {"a": 633_333, "b": 316_666}


def test_no_members_share_nothing() -> None:
    assert split(GLOBAL, []) == {}


def test_share_below_minimum_is_impossible() -> None:
    with pytest.raises(BudgetImpossible, match="less than the 1000 us minimum") as caught:
        split(5_000, [Member(str(i)) for i in range(6)])
    assert caught.value.exit_code == 1
    assert isinstance(caught.value, XmsError)


def test_exact_minimum_is_possible() -> None:
    assert split(2 * MIN_RUNTIME_US, [Member("a"), Member("b")]) == {"a": 1000, "b": 1000}


def test_weight_below_one_is_bad_input() -> None:
    with pytest.raises(BadInput):
        Member("a", 0)


def test_duplicate_members_are_bad_input() -> None:
    with pytest.raises(BadInput):
        split(GLOBAL, [Member("a"), Member("a")])


def test_pool_is_capacity_minus_foreign_capped_never_negative() -> None:
    assert compute_pool(950_000, 0) == 950_000
    assert compute_pool(950_000, 100_000) == 850_000
    assert compute_pool(950_000, 100_000, cap_us=400_000) == 400_000
    assert compute_pool(950_000, 100_000, cap_us=900_000) == 850_000
    assert compute_pool(100_000, 200_000) == 0


@dataclass(frozen=True)
class Child:
    name: str
    runtime_us: int
    period_us: int = 1_000_000


def test_the_room_counts_every_other_group_that_holds_runtime_as_foreign_per_period() -> None:
    children = [Child("ours", 300_000), Child("other", 50_000, 500_000), Child("idle", 0), Child("free", -1)]
    assert room(950_000, 0, children, {"ours"}).foreign == {"other": 100_000, "free": 1_000_000}
    found = room(950_000, 150_000, children[:3], {"ours"}, cap_us=500_000)
    assert (found.capacity_us, found.siblings_us, found.foreign_us) == (800_000, 150_000, 100_000)
    assert found.held == {"ours": 300_000}
    assert found.pool_us == compute_pool(800_000, 100_000, 500_000) == 500_000


def test_capacity_is_root_minus_siblings_and_unlimited_root_is_the_period() -> None:
    assert capacity(950_000, 200_000) == 750_000
    assert capacity(-1, 0) == 1_000_000
    assert capacity(100_000, 200_000) == 0


def test_foreign_runtime_with_other_period_converts_by_ratio_rounding_up() -> None:
    assert to_period(50_000, 500_000) == 100_000
    assert to_period(1, 3) == 333_334
    assert to_period(-1, 500_000) == 1_000_000


def test_second_container_arriving_shrinks_the_first_before_creating_the_second() -> None:
    writes = plan(GLOBAL, GLOBAL, {"a": 950_000}, {"a": 475_000, "b": 475_000})
    assert writes == [Write("a", 475_000), Write("b", 475_000)]


def test_first_container_on_a_fresh_parent_raises_the_parent_first() -> None:
    assert plan(0, GLOBAL, {}, {"a": GLOBAL}) == [Write(PARENT, GLOBAL), Write("a", GLOBAL)]


def test_departure_grows_the_rest_without_writing_the_departed() -> None:
    now = {"a": 316_666, "b": 316_666, "c": 316_666}
    assert plan(GLOBAL, GLOBAL, now, {"a": 475_000, "b": 475_000}) == [Write("a", 475_000), Write("b", 475_000)]


def test_shrinking_parent_is_written_after_donors() -> None:
    writes = plan(GLOBAL, 500_000, {"a": 475_000, "b": 475_000}, {"a": 250_000, "b": 250_000})
    assert writes == [Write("a", 250_000), Write("b", 250_000), Write(PARENT, 500_000)]


def test_unchanged_values_are_not_written() -> None:
    assert plan(GLOBAL, GLOBAL, {"a": 475_000, "b": 475_000}, {"a": 475_000, "b": 475_000}) == []


def test_targets_above_parent_are_impossible() -> None:
    with pytest.raises(BudgetImpossible):
        plan(GLOBAL, GLOBAL, {}, {"a": 500_000, "b": 500_000})
    with pytest.raises(BudgetImpossible):
        plan(GLOBAL, GLOBAL, {}, {"a": 475_000, "b": 475_000}, foreign_us=1)


def test_zero_target_for_a_member_is_impossible() -> None:
    with pytest.raises(BudgetImpossible):
        plan(GLOBAL, GLOBAL, {"a": 475_000}, {"a": 0})


def test_kernel_refuses_growing_a_receiver_before_the_donor_shrinks() -> None:
    kernel = KernelModel(capacity=GLOBAL, parent=GLOBAL, children={"a": GLOBAL})
    with pytest.raises(KernelRefusal):
        kernel.write(Write("b", 475_000))


def test_kernel_refuses_parent_above_capacity_and_below_children() -> None:
    kernel = KernelModel(capacity=GLOBAL, parent=GLOBAL, children={"a": 400_000})
    with pytest.raises(KernelRefusal):
        kernel.write(Write(PARENT, GLOBAL + 1))
    with pytest.raises(KernelRefusal):
        kernel.write(Write(PARENT, 399_999))


def test_kernel_refuses_zero_for_a_group_running_real_time_threads() -> None:
    kernel = KernelModel(capacity=GLOBAL, parent=GLOBAL, children={"a": 400_000}, holding_rt={"a"})
    with pytest.raises(KernelRefusal):
        kernel.write(Write("a", 0))


def test_rollback_restores_values_in_reverse_order() -> None:
    before = {"a": 950_000}
    applied = plan(GLOBAL, GLOBAL, before, {"a": 475_000, "b": 475_000})
    assert rollback(applied, before, GLOBAL) == [Write("a", 950_000)]
    kernel = KernelModel(capacity=GLOBAL, parent=GLOBAL, children=dict(before))
    kernel.apply(applied)
    kernel.vanish("b")
    kernel.apply(rollback(applied, before, GLOBAL))
    assert kernel.children == before


# A property test runs a cluster's life: containers arrive, leave and change weight, other real-time
# groups in the parent appear and go, the parent's siblings change, the user changes the cap.


@dataclass
class World:
    kernel: KernelModel
    weights: dict[str, int] = field(default_factory=dict)
    foreign: int = 0
    capacity: int = GLOBAL
    cap: int | None = None
    next_key: int = 0


Step = tuple[str, int, int]
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.integers(1, 5), st.just(0)),
        st.tuples(st.just("depart"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("weight"), st.integers(0, 50), st.integers(1, 5)),
        st.tuples(st.just("foreign"), st.integers(0, 400_000), st.just(0)),
        st.tuples(st.just("capacity"), st.integers(0, 1_000_000), st.just(0)),
        # -1: the user removes the cap
        st.tuples(st.just("cap"), st.integers(-1, 1_000_000), st.just(0)),
    ),
    max_size=25,
)


def next_world(world: World, step: Step) -> World:
    new = copy.deepcopy(world)
    kind, value, weight = step
    keys = sorted(new.weights)
    if kind == "arrive":
        new.weights[f"c{new.next_key}"] = value
        new.next_key += 1
    elif kind == "depart" and keys:
        del new.weights[keys[value % len(keys)]]
    elif kind == "weight" and keys:
        new.weights[keys[value % len(keys)]] = weight
    elif kind == "foreign":
        new.foreign = value
    elif kind == "capacity":
        new.capacity = value
    elif kind == "cap":
        new.cap = None if value < 0 else value
    return new


def targets_for(world: World) -> tuple[int, dict[str, int]] | None:
    if world.foreign > world.capacity:
        return None  # the kernel would never have let that foreign group in
    pool = compute_pool(world.capacity, world.foreign, world.cap)
    try:
        shares = split(pool, [Member(k, w) for k, w in sorted(world.weights.items())])
    except BudgetImpossible:
        return None
    return pool + world.foreign, shares


def replay(steps: list[Step], check_rollback: bool) -> None:
    world = World(KernelModel(capacity=GLOBAL))
    for step in steps:
        new = next_world(world, step)
        wanted = targets_for(new)
        if wanted is None:
            continue
        parent_target, target = wanted
        kernel = world.kernel
        for key in set(kernel.children) - set(target):
            kernel.vanish(key)
        # What only frees room happens before the plan; what takes room can only happen after it.
        kernel.foreign = min(kernel.foreign, new.foreign)
        kernel.capacity = max(kernel.capacity, new.capacity)
        writes = plan(kernel.parent, parent_target, dict(kernel.children), target, new.foreign)
        if check_rollback:
            check_rollbacks(kernel, writes)
        kernel.apply(writes)
        kernel.foreign = new.foreign
        kernel.capacity = new.capacity
        assert kernel.children == target
        assert kernel.parent == compute_pool(new.capacity, new.foreign, new.cap) + new.foreign
        assert kernel.used() <= kernel.parent <= kernel.capacity
        assert all(w.value > 0 for w in writes if w.target != PARENT)
        world = World(kernel, new.weights, new.foreign, new.capacity, new.cap, new.next_key)


def check_rollbacks(kernel: KernelModel, writes: list[Write]) -> None:
    for cut in range(len(writes) + 1):
        trial = copy.deepcopy(kernel)
        applied = writes[:cut]
        trial.apply(applied)
        for arrived in {w.target for w in applied} - set(kernel.children) - {PARENT}:
            trial.vanish(arrived)
        trial.apply(rollback(applied, dict(kernel.children), kernel.parent))
        assert trial.children == kernel.children
        assert trial.parent == kernel.parent


@settings(max_examples=400, deadline=None)
@given(STEPS)
def test_every_plan_write_is_accepted_and_reaches_the_targets(steps: list[Step]) -> None:
    replay(steps, check_rollback=False)


@settings(max_examples=200, deadline=None)
@given(STEPS)
def test_rollback_from_any_prefix_is_accepted_and_restores_the_start(steps: list[Step]) -> None:
    replay(steps, check_rollback=True)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 150_000), max_size=6),
    st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 150_000), max_size=6),
    st.integers(0, 100_000),
)
def test_plan_between_any_valid_states_is_accepted(now: dict[str, int], target: dict[str, int], foreign: int) -> None:
    parent_now = sum(now.values()) + foreign
    parent_target = sum(target.values()) + foreign
    kernel = KernelModel(capacity=1_000_000, parent=parent_now, children=dict(now), foreign=foreign)
    for key in set(now) - set(target):
        kernel.vanish(key)
    kernel.apply(plan(parent_now, parent_target, now, target, foreign))
    assert kernel.children == target
    assert kernel.parent == parent_target
