"""Rebalance and the reservation of a share while others change the host between the scan and the writes.
In-memory fakes (tests/fakes.py) refuse what the kernel refuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from docker_xms.adapters.cgroups import CgroupWriteError
from docker_xms.domain.labels import MANAGED_LABEL, PROFILE_LABEL, reserved_weight
from docker_xms.errors import ContainerBeingRemoved, EngineUnavailable, XmsError
from docker_xms.usecases import rt as rt_module
from docker_xms.usecases.rt import rebalance, reserve
from tests.fakes import FakeEngine
from tests.unit.usecase_host import Host, make_host


@pytest.fixture
def host(tmp_path: Path) -> Host:
    host = make_host(tmp_path)
    host.fs.write_runtime("/docker", 950_000)
    return host


@pytest.fixture(autouse=True)
def short_release_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # A refusal that stands is waited for this long before it is reported; the fakes need no more.
    monkeypatch.setattr(rt_module, "RELEASE_WAIT_S", 0.2)


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


def test_a_group_the_kernel_still_counts_after_its_container_was_removed_is_waited_for(host: Host) -> None:
    # `rm` removes a container and rebalances at once: its group's directory is gone, but the kernel
    # frees the group's runtime a moment later, so the first writes that grow another are refused.
    host.fs.linger = 3
    a = host.managed("a", runtime=475_000)
    b = host.managed("b", runtime=475_000)
    host.engine.vanish(b.id)

    assert rebalance(host.rt).budgets == {a.id: 950_000}
    assert host.runtime(a) == 950_000
    assert host.fs.dying == {}


def test_a_group_the_kernel_never_frees_fails_in_one_sentence_after_the_wait(host: Host) -> None:
    host.fs.linger = 10**9
    a = host.managed("a", runtime=475_000)
    b = host.managed("b", runtime=475_000)
    host.engine.vanish(b.id)

    with pytest.raises(CgroupWriteError) as failed:
        rebalance(host.rt)

    assert "The kernel refused 950000" in failed.value.message
    assert failed.value.message.endswith("The rebalance was rolled back to the previous budgets.")
    assert str(failed.value) == failed.value.message
    assert host.runtime(a) == 475_000


def test_a_rebalance_the_engine_leaves_mid_plan_is_still_engine_unavailable_once_rolled_back(host: Host) -> None:
    # The agent tells an engine that went away (it waits for it) from any other failure (it starts over).
    a = host.managed("a", runtime=950_000)
    b = host.managed("b")
    gone = EngineUnavailable("The Docker engine did not answer (connection refused): start dockerd, or wait for it.")
    before_update_of(host.engine, b.id, lambda: host.engine.fail.update(update_rt_runtime=gone))

    with pytest.raises(EngineUnavailable) as failed:
        rebalance(host.rt)

    assert failed.value.message == f"{gone.reason} The rebalance was rolled back to the previous budgets."
    assert host.runtime(a) == 950_000


def test_a_container_the_engine_is_removing_is_passed_over_like_one_removed(host: Host) -> None:
    # `docker rm -f` has begun: the engine refuses to store the container's budget, and its group goes with it.
    a = host.managed("a", runtime=950_000)
    b = host.managed("b")
    refusal = ContainerBeingRemoved(
        f"The engine could not set the real-time budget of {b.id[:12]} to 475000 us: Cannot update container "
        f'{b.id}: container is marked for removal and cannot be "update".'
    )
    before_update_of(host.engine, b.id, lambda: host.engine.fail.update(update_rt_runtime=refusal))

    assert rebalance(host.rt).budgets == {a.id: 475_000, b.id: 475_000}
    assert host.runtime(a) == 475_000
    host.engine.vanish(b.id)
    assert rebalance(host.rt).budgets == {a.id: 950_000}


def test_a_reservation_gives_the_others_their_share_back_when_its_block_raises(host: Host) -> None:
    a = host.managed("a", runtime=950_000)

    held: list[int] = []

    def start_that_fails() -> None:
        with reserve(host.rt, 1) as share:
            held.extend((share.arriving_us, host.runtime(a)))
            raise RuntimeError("the start failed")

    with pytest.raises(RuntimeError, match="the start failed"):
        start_that_fails()

    assert held == [475_000, 475_000]
    assert host.runtime(a) == 950_000


def test_a_reservation_keeps_the_room_made_when_its_block_succeeds(host: Host) -> None:
    a = host.managed("a", runtime=950_000)
    b = host.managed("b", running=False)

    with reserve(host.rt, 1) as share:
        host.engine.update_rt_runtime(b.id, share.arriving_us)
        host.engine.start(b.id)

    assert (host.runtime(a), host.runtime(b)) == (475_000, 475_000)


def swarm_task(host: Host, name: str, *env: str) -> str:
    labels = {MANAGED_LABEL: "true", PROFILE_LABEL: "rtpengine", "com.docker.swarm.task.name": f"media.{name}.x"}
    container = host.engine.add(name, labels)
    container.env = ("PATH=/usr/bin", *env)
    return container.id


def test_swarm_tasks_weigh_the_rt_ms_they_reserved(host: Host) -> None:
    small = swarm_task(host, "1", "DOCKER_RESOURCE_RT_MS=30")
    large = swarm_task(host, "2", "DOCKER_RESOURCE_RT_MS=60")
    plain = swarm_task(host, "3")  # reserved nothing: weighs 1, as a container without a weight label

    # 950,000 us in 30 + 60 + 1 parts.
    assert rebalance(host.rt).budgets == {small: 313_186, large: 626_373, plain: 10_439}
    assert (host.runtime(small), host.runtime(large), host.runtime(plain)) == (313_186, 626_373, 10_439)


@pytest.mark.parametrize(
    ("env", "weight"),
    [
        (["DOCKER_RESOURCE_RT_MS=95"], 95),
        (["DOCKER_RESOURCE_RT_MSX=95", "A=1"], None),
        (["DOCKER_RESOURCE_RT_MS=0"], None),
        (["DOCKER_RESOURCE_RT_MS=gpu-1,gpu-2"], None),
        ([], None),
    ],
)
def test_the_reserved_weight_is_a_positive_whole_number_of_ms(env: list[str], weight: int | None) -> None:
    assert reserved_weight(env) == weight
