"""CPU sets as the unit of real-time share: the plan (pure), the mode a host gets from the settings, and a
rebalance in CPU-set mode on the in-memory host (CPUs through the engine, budgets by CPU share)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from docker_xms.domain import budget
from docker_xms.domain.cpusets import CpuLayout, format_cpu_list, layout, parse_cpu_list, plan, shortage
from docker_xms.errors import BadInput
from docker_xms.settings import Settings
from docker_xms.usecases.rt import cpu_layout, read_state, rebalance, reserve
from tests.unit.usecase_host import Host, make_host


def test_cpu_lists_read_and_write_as_the_kernel_does() -> None:
    assert parse_cpu_list("0-3,6\n") == (0, 1, 2, 3, 6)
    assert parse_cpu_list("1") == (1,)
    assert format_cpu_list([3, 1, 2, 6]) == "1-3,6"
    assert format_cpu_list([]) == ""
    for bad in ("a", "3-1", "1-x"):
        with pytest.raises(BadInput, match="CPU list"):
            parse_cpu_list(bad)


def test_housekeeping_takes_the_lowest_cpus_and_at_least_one_is_left_for_media() -> None:
    assert layout((0, 1), 1) == CpuLayout((0,), (1,))
    assert layout((0, 1, 2, 3), 2).media == (2, 3)
    assert layout((0, 1), 0).media == (0, 1)
    with pytest.raises(BadInput, match="no CPU is left for media"):
        layout((0,), 1)
    with pytest.raises(BadInput, match="0 or more"):
        layout((0, 1), -1)


def test_enough_cpus_each_container_its_own_the_rest_by_weight() -> None:
    four = CpuLayout((0,), (1, 2, 3, 4))
    placed = plan(four, [("a", 1), ("b", 3)])
    assert placed.cpus == {"a": (1,), "b": (2, 3, 4)}
    assert set(placed.sharers.values()) == {1}
    assert placed.share_weight("a") == 1000
    assert placed.share_weight("b") == 3000
    assert plan(four, [("a", 1), ("b", 1)]).cpus == {"a": (1, 2), "b": (3, 4)}
    assert plan(four, []).cpus == {}


def test_too_few_cpus_each_container_one_shared_by_as_few_as_possible() -> None:
    one = CpuLayout((0,), (1,))
    placed = plan(one, [("a", 1), ("b", 5), ("c", 1)])
    assert placed.cpus == {"a": (1,), "b": (1,), "c": (1,)}
    assert placed.sharers == {1: 3}
    assert placed.share_weight("b") == 333
    two = plan(CpuLayout((0,), (1, 2)), [("a", 1), ("b", 1), ("c", 1)])
    assert sorted(two.sharers.values()) == [1, 2]


def test_a_container_keeps_its_cpus_when_another_arrives_or_leaves() -> None:
    three = CpuLayout((0,), (1, 2, 3))
    # "a" came first but holds 3; "b" holds 1: each keeps it, the newcomer takes what is free.
    placed = plan(three, [("a", 1), ("b", 1), ("c", 1)], {"a": (3,), "b": (1,)})
    assert placed.cpus == {"a": (3,), "b": (1,), "c": (2,)}
    # The first one leaves: the others stay where they are ("b", first on a tie, grows onto the freed CPU).
    assert plan(three, [("b", 1), ("c", 1)], {"b": (1,), "c": (2,)}).cpus == {"b": (1, 3), "c": (2,)}
    # A member shrinking keeps the lowest of its own; one holding a housekeeping CPU or another's gets a free one.
    assert plan(three, [("a", 1), ("b", 2)], {"a": (1, 2, 3), "b": (0,)}).cpus == {"a": (1,), "b": (2, 3)}
    assert plan(three, [("a", 1), ("b", 1), ("c", 1)], {"a": (2,), "b": (2,)}).cpus == {"a": (2,), "b": (1,), "c": (3,)}


def test_shared_cpus_stay_with_their_containers_and_stay_even() -> None:
    two = CpuLayout((0,), (1, 2))
    # Three on two CPUs: 2 stays with "b" and "c" (one above the other at most), "a" keeps 1.
    placed = plan(two, [("a", 1), ("b", 1), ("c", 1)], {"a": (1,), "b": (2,), "c": (2,)})
    assert placed.cpus == {"a": (1,), "b": (2,), "c": (2,)}
    # All on one CPU: only as many as the even load allows stay.
    placed = plan(two, [("a", 1), ("b", 1), ("c", 1), ("d", 1)], dict.fromkeys("abcd", (1,)))
    assert placed.sharers == {1: 2, 2: 2}
    assert [placed.cpus[k] for k in "ab"] == [(1,), (1,)]
    # Any holdings at all: never more than one apart.
    for held in ({}, {"a": (2,)}, dict.fromkeys("abc", (2,)), {"a": (1,), "b": (1,), "e": (2,)}):
        sharers = plan(two, [(k, 1) for k in "abcde"], held).sharers
        assert sorted(sharers.values()) == [2, 3], held


def test_a_full_host_refuses_the_next_container_only_where_the_setting_says_so() -> None:
    assert shortage(CpuLayout((0,), (1,)), 1) is None
    sentence = shortage(CpuLayout((0,), (1,), "refuse"), 1)
    assert sentence is not None
    assert "cpus_when_short is refuse" in sentence
    assert shortage(CpuLayout((0,), (1, 2), "refuse"), 1) is None


@pytest.mark.parametrize(
    ("rt_mode", "mode", "online", "expected"),
    [
        ("auto", "per-group", (0, 1), None),
        ("auto", "global", (0, 1), CpuLayout((0,), (1,))),
        ("auto", "global", (0,), None),
        ("auto", "global", (), None),
        ("auto", "v2-rt-group", (0, 1), None),
        ("auto", "none", (0, 1), None),
        ("cpus", "per-group", (0, 1), CpuLayout((0,), (1,))),
        ("budgets", "per-group", (0, 1), None),
    ],
)
def test_the_mode_comes_from_the_setting_and_the_host(
    rt_mode: str, mode: str, online: tuple[int, ...], expected: CpuLayout | None
) -> None:
    assert cpu_layout(Settings(rt_mode=rt_mode), mode, lambda: online) == expected  # type: ignore[arg-type]


def test_settings_that_cannot_work_are_refused_in_one_sentence() -> None:
    with pytest.raises(BadInput, match="rt_mode = budgets needs per-group"):
        cpu_layout(Settings(rt_mode="budgets"), "global", lambda: (0, 1))
    with pytest.raises(BadInput, match="rt_mode must be one of auto, budgets, cpus"):
        cpu_layout(Settings(rt_mode="fast"), "per-group", lambda: (0, 1))
    with pytest.raises(BadInput, match="cpus_when_short must be one of share, refuse"):
        cpu_layout(Settings(cpus_when_short="wait"), "per-group", lambda: (0, 1))
    with pytest.raises(BadInput, match="no CPU is left"):
        cpu_layout(Settings(rt_mode="cpus"), "per-group", lambda: (0,))


@pytest.fixture
def host(tmp_path: Path) -> Host:
    made = make_host(tmp_path)
    made.fs.write_runtime("/docker", 950_000)
    made.rt = dataclasses.replace(made.rt, cpus=CpuLayout((0,), (1, 2)))
    return made


def test_a_rebalance_gives_cpus_through_the_engine_and_budgets_by_cpu_share(host: Host) -> None:
    a = host.managed("a")
    b = host.managed("b", weight="3")
    result = rebalance(host.rt)
    assert result.cpus == {a.id: "1", b.id: "2"}
    assert (host.engine.containers[a.id].cpuset_cpus, host.engine.containers[b.id].cpuset_cpus) == ("1", "2")
    # Each holds one of the two media CPUs alone: half the pool each, whatever the weights.
    assert result.budgets == {a.id: 475_000, b.id: 475_000}
    # A third shares a CPU: the first two keep theirs; the shared CPU's half is split.
    c = host.managed("c")
    result = rebalance(host.rt)
    assert result.cpus == {a.id: "1", b.id: "2", c.id: "1"}
    assert result.budgets == {a.id: 237_500, b.id: 475_000, c.id: 237_500}
    assert result.cpu_changes == {c.id: ("", "1")}
    state = read_state(host.rt)
    assert state.mode == "cpus"
    assert (state.housekeeping_cpus, state.media_cpus) == ("0", "1-2")
    assert {h.name: h.cpus for h in state.managed} == {"a": "1", "b": "2", "c": "1"}


def test_a_hand_change_of_a_containers_cpus_is_mended(host: Host) -> None:
    a = host.managed("a")
    rebalance(host.rt)
    host.engine.containers[a.id].cpuset_cpus = "0"
    result = rebalance(host.rt)
    assert result.cpu_changes == {a.id: ("0", "1-2")}
    assert host.engine.containers[a.id].cpuset_cpus == "1-2"
    assert rebalance(host.rt).cpu_changes == {}


def test_an_arriving_container_gets_its_cpus_or_is_refused_when_they_ran_out(host: Host) -> None:
    host.managed("a")
    with reserve(host.rt, 1) as share:
        assert share.arriving_cpus == "2"
        assert share.budgets[budget.ARRIVING] == 475_000
    host.managed("b")
    rebalance(host.rt)
    host.rt = dataclasses.replace(host.rt, cpus=CpuLayout((0,), (1, 2), "refuse"))
    with pytest.raises(BadInput, match="cpus_when_short is refuse"), reserve(host.rt, 1):
        pass
    # Nothing changed by the refusal.
    assert sorted(c.cpuset_cpus for c in host.engine.containers.values()) == ["1", "2"]


def test_a_cpu_list_naming_more_cpus_than_any_kernel_has_is_refused_without_being_spelled_out() -> None:
    with pytest.raises(BadInput, match="is not a CPU list"):
        parse_cpu_list("0-99999999")
    assert parse_cpu_list("0-3,65535") == (0, 1, 2, 3, 65535)
