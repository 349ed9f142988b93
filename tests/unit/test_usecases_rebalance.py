"""Rebalance while others change the host between its scan and its writes; reconcile beside containers whose
labels cannot be read. In-memory fakes (tests/fakes.py) refuse what the kernel refuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from docker_xms.domain.forwards import DnatForward
from docker_xms.errors import XmsError
from docker_xms.usecases.reconcile import reconcile
from docker_xms.usecases.rt import rebalance
from tests.fakes import FakeEngine
from tests.unit.usecase_host import Host, make_host


@pytest.fixture
def host(tmp_path: Path) -> Host:
    host = make_host(tmp_path)
    host.fs.write_runtime("/docker", 950_000)
    return host


def before_update_of(engine: FakeEngine, container_id: str, action: Callable[[], None]) -> None:
    """Run `action` just before the budget of `container_id` is written through the engine."""

    def hook(target: str, *_: object) -> None:
        if target == container_id:
            action()
        else:
            engine.before["update_rt_runtime"] = hook

    engine.before["update_rt_runtime"] = hook


def test_a_receiver_removed_by_hand_before_its_write_is_passed_over(host: Host) -> None:
    a = host.managed("a", runtime=950_000)
    b = host.managed("b")
    before_update_of(host.engine, b.id, lambda: host.engine.vanish(b.id))

    result = rebalance(host.rt)

    assert result.budgets == {a.id: 475_000, b.id: 475_000}
    assert host.runtime(a) == 475_000
    assert not host.fs.exists(host.engine.cgroup_of(b.id))
    assert rebalance(host.rt).budgets == {a.id: 950_000}
    assert host.runtime(a) == 950_000


def test_a_donor_stopped_before_its_write_is_passed_over(host: Host) -> None:
    a = host.managed("a", runtime=475_000)
    b = host.managed("b", runtime=475_000)
    c = host.managed("c", weight="2")
    before_update_of(host.engine, a.id, lambda: host.engine.stop(b.id))

    rebalance(host.rt)

    assert (host.runtime(a), host.runtime(c)) == (237_500, 475_000)
    rebalance(host.rt)
    assert (host.runtime(a), host.runtime(c)) == (316_666, 633_333)


def test_a_container_started_between_the_scan_and_the_writes_gets_its_share_next_time(host: Host) -> None:
    a = host.managed("a", runtime=950_000)
    b = host.managed("b")
    late: list[str] = []
    before_update_of(host.engine, a.id, lambda: late.append(host.managed("late").id))

    rebalance(host.rt)

    assert (host.runtime(a), host.runtime(b), host.runtime(late[0])) == (475_000, 475_000, 0)
    rebalance(host.rt)
    assert [host.runtime(cid) for cid in (a.id, b.id, late[0])] == [316_666] * 3


def test_room_taken_by_another_holder_mid_plan_fails_in_one_sentence_and_the_next_rebalance_counts_it(
    host: Host,
) -> None:
    a = host.managed("a", runtime=950_000)
    b = host.managed("b")
    # A plain `docker run --cpu-rt-runtime` of someone else's, started after `a` was shrunk.
    other: list[str] = []
    before_update_of(host.engine, b.id, lambda: other.append(host.engine.add("other", {}, cpu_rt_runtime=475_000).id))

    with pytest.raises(XmsError) as failed:
        rebalance(host.rt)

    assert "The kernel refused 475000" in failed.value.message
    assert "\n" not in failed.value.message
    result = rebalance(host.rt)
    assert result.foreign == {other[0]: 475_000}
    assert (host.runtime(a), host.runtime(b), host.runtime(other[0])) == (237_500, 237_500, 475_000)


def test_reconcile_skips_and_reports_containers_whose_labels_cannot_be_read_and_sets_the_others_right(
    host: Host,
) -> None:
    bad_weight = host.managed("bad-weight", weight="zero", runtime=100_000)
    bad_dnat = host.managed("bad-dnat", dnat="rtp/udp:nonsense", runtime=50_000)
    held = DnatForward("rtp", "udp", 31000, 31009, 31000, 31009, bad_dnat.ip_address)
    host.netfilter.forwards[bad_dnat.id[:12]] = [held]
    good = host.managed("good", weight="2", dnat="rtp/udp:30000-30009>30000-30009")
    other = host.managed("other", weight="1")

    result = reconcile(host.rt, host.netfilter)

    assert sorted(s.name for s in result.budgets.skipped) == ["bad-dnat", "bad-weight"]
    reasons = {s.name: s.reason for s in result.budgets.skipped}
    assert "rt-weight='zero'" in reasons["bad-weight"]
    assert "nonsense" in reasons["bad-dnat"]
    # They keep what they hold, counted like another holder's; the others share the rest by weight.
    assert (host.runtime(bad_weight), host.runtime(bad_dnat)) == (100_000, 50_000)
    assert (host.runtime(good), host.runtime(other)) == (533_333, 266_666)
    assert host.netfilter.forwards[bad_dnat.id[:12]] == [held]
    assert [f.host_start for f in host.netfilter.forwards[good.id[:12]]] == [30000]
    assert bad_weight.id[:12] not in host.netfilter.forwards
