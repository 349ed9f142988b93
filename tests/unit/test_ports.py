from __future__ import annotations

from dataclasses import replace
from importlib import resources
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docker_xms.domain.forwards import DnatForward
from docker_xms.domain.labels import LABEL_DNAT, LABEL_HOST_MEDIA, forwards_from_labels, host_ranges_from_labels
from docker_xms.domain.ports import (
    PortPlan,
    bind_addresses,
    bound,
    carve,
    check_bind,
    decide_strategy,
    ephemeral_outside,
    plan_ports,
    with_container_ephemeral,
)
from docker_xms.domain.profiles import PortSpec, Profile, parse_profile
from docker_xms.errors import BadInput

# Below the kernel's ephemeral range (32768-60999), as `run` keeps its pool.
POOL = (20000, 32767)


def builtin(name: str) -> Profile:
    text = (resources.files("docker_xms") / "profiles" / f"{name}.toml").read_text("utf-8")
    return parse_profile(text, name)


XMS = builtin("xms")
# rtpengine's layout as its Debian package ships it, fixed here so the shipped demo profile may narrow it.
RTPENGINE = replace(
    builtin("rtpengine"),
    ports=(PortSpec("ng", "udp", 2223, 2223, "control"),),
    media_ranges=(PortSpec("rtp", "udp", 30000, 39999, "media"),),
)


def plan(profile: Profile, mode: str, strategy: str, **kwargs: Any) -> PortPlan:
    kwargs.setdefault("host_pool", POOL)
    return plan_ports(profile.ports, profile.media_ranges, mode, strategy, **kwargs)


def test_profiles_have_the_media_port_counts_the_tests_assume() -> None:
    assert XMS.media_port_count == 4498
    assert [(r.start, r.end) for r in RTPENGINE.media_ranges] == [(30000, 39999)]


# Choosing a strategy


def test_auto_forwards_many_media_ports_with_dnat() -> None:
    choice = decide_strategy("auto", "one-to-one", 4498, netfilter_available=True)
    assert choice.strategy == "dnat"
    assert "4498 media ports" in choice.reason


def test_auto_publishes_when_iptables_is_not_usable_and_says_so() -> None:
    choice = decide_strategy("auto", "container-address", 4498, netfilter_available=False)
    assert choice.strategy == "publish"
    assert "iptables" in choice.reason


def test_auto_publishes_a_few_media_ports() -> None:
    assert decide_strategy("auto", "one-to-one", 20, netfilter_available=True).strategy == "publish"
    assert decide_strategy("auto", "one-to-one", 21, netfilter_available=True).strategy == "dnat"


def test_an_explicit_strategy_is_kept() -> None:
    assert decide_strategy("host", "container-address", 4498, netfilter_available=True).strategy == "host"
    assert decide_strategy("publish", "one-to-one", 4498, netfilter_available=True).strategy == "publish"


@pytest.mark.parametrize(
    ("requested", "mode", "available", "message"),
    [
        ("dnat", "one-to-one", False, "needs a usable iptables"),
        ("nat", "one-to-one", True, "Unknown port strategy 'nat'"),
        ("macvlan", "container-address", True, "Unknown port strategy 'macvlan'"),
        ("auto", "bridge", True, "Unknown port mode 'bridge'"),
    ],
)
def test_bad_strategy_requests_are_refused_in_one_sentence(
    requested: str, mode: str, available: bool, message: str
) -> None:
    with pytest.raises(BadInput, match=message) as caught:
        decide_strategy(requested, mode, 4498, available)
    assert caught.value.message.count(". ") == 0


# One-to-one


def test_one_to_one_dnat_publishes_signalling_and_forwards_each_media_range_to_itself() -> None:
    p = plan(XMS, "one-to-one", "dnat")
    assert p.network_mode == "bridge"
    assert p.publish == {
        "22/tcp": 2222,
        "80/tcp": 80,
        "81/tcp": 81,
        "443/tcp": 443,
        "1080/tcp": 1080,
        "5060/tcp": 5060,
        "5060/udp": 5060,
        "10443/tcp": 10443,
        "15001/tcp": 15001,
    }
    assert p.forwards == (
        DnatForward("rtp", "udp", 49152, 53152, 49152, 53152),
        DnatForward("udp-57344", "udp", 57344, 57840, 57344, 57840),
    )
    assert p.media_range == (49152, 53152)
    assert p.media_port_count == 4498
    assert p.host_media_ranges == ((49152, 53152), (57344, 57840))


def test_one_to_one_publish_lists_every_media_port_for_the_engine() -> None:
    p = plan(XMS, "one-to-one", "publish")
    assert len(p.publish) == 9 + 4498
    assert p.publish["50000/udp"] == 50000
    assert p.publish["57840/udp"] == 57840
    assert p.forwards == ()


def test_one_to_one_refuses_host_ports_another_container_holds() -> None:
    with pytest.raises(BadInput, match="Host ports 49000-49200 are held by another container"):
        plan(XMS, "one-to-one", "dnat", used_host_ranges=[(49000, 49200)])


def test_host_networking_one_to_one_uses_the_profiles_ranges() -> None:
    p = plan(RTPENGINE, "one-to-one", "host")
    assert (p.network_mode, dict(p.publish), p.forwards) == ("host", {}, ())
    assert p.media_range == (30000, 39999)


# Container-address mode


def test_three_xms_containers_get_disjoint_host_ranges_from_their_neighbours_labels() -> None:
    used: list[tuple[int, int]] = []
    plans = []
    for _ in range(3):
        p = plan(XMS, "container-address", "dnat", used_host_ranges=list(used), host_pool=(20000, 34999))
        used.extend(host_ranges_from_labels(p.labels()))
        plans.append(p)
    assert [p.host_media_ranges for p in plans] == [
        ((20000, 24497),),
        ((24498, 28995),),
        ((28996, 33493),),
    ]
    for p in plans:
        # Each container still listens on its own, unchanged media ports.
        assert p.media_range == (49152, 53152)
        assert [(f.container_start, f.container_end) for f in p.forwards] == [(49152, 53152), (57344, 57840)]
        assert all(f.host_end - f.host_start == f.container_end - f.container_start for f in p.forwards)
        assert p.publish["5060/udp"] is None
        assert p.publish["22/tcp"] is None


def test_a_taken_block_moves_to_the_next_free_block() -> None:
    p = plan(RTPENGINE, "container-address", "dnat", media_ports=1000, used_host_ranges=[(20000, 20999)])
    assert p.host_media_ranges == ((21000, 21999),)


def test_ranges_stay_in_the_pool_and_exhaustion_is_one_sentence() -> None:
    used: list[tuple[int, int]] = []
    for _ in range(2):
        p = plan(XMS, "container-address", "dnat", used_host_ranges=list(used))
        used.extend(p.host_media_ranges)
    assert used == [(20000, 24497), (24498, 28995)]
    with pytest.raises(BadInput, match="no free block of 4498 ports") as caught:
        plan(XMS, "container-address", "dnat", used_host_ranges=used)
    assert "--media-ports" in caught.value.message


def test_container_address_publish_gives_each_media_port_a_host_port_in_the_containers_range() -> None:
    p = plan(RTPENGINE, "container-address", "publish", media_ports=10, used_host_ranges=[(20000, 20004)])
    media = {k: v for k, v in p.publish.items() if k != "2223/udp"}
    assert media == {f"{30000 + i}/udp": 20005 + i for i in range(10)}
    assert p.publish["2223/udp"] is None


def test_a_custom_pool_is_used() -> None:
    p = plan(RTPENGINE, "container-address", "dnat", host_pool=(40000, 49999))
    assert p.forwards == (DnatForward("rtp", "udp", 40000, 49999, 30000, 39999),)
    with pytest.raises(BadInput, match="no free block of 10000 ports"):
        plan(RTPENGINE, "container-address", "dnat", host_pool=(40000, 49998))


# Media port limits


def test_media_ports_keeps_the_first_n_ports() -> None:
    assert plan(XMS, "one-to-one", "dnat", media_ports=100).forwards == (
        DnatForward("rtp", "udp", 49152, 49251, 49152, 49251),
    )
    p = plan(XMS, "container-address", "dnat", media_ports=4100)
    assert p.forwards == (
        DnatForward("rtp", "udp", 20000, 24000, 49152, 53152),
        DnatForward("udp-57344", "udp", 24001, 24099, 57344, 57442),
    )


@pytest.mark.parametrize(
    ("count", "message"),
    [(4499, "more than the profile's 4498 media ports"), (0, "at least 1")],
)
def test_impossible_media_port_counts_are_refused(count: int, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        plan(XMS, "container-address", "dnat", media_ports=count)


def test_plan_ports_wants_a_chosen_strategy() -> None:
    with pytest.raises(BadInput, match="Unknown port strategy 'auto'"):
        plan(XMS, "one-to-one", "auto")


# Host networking slices


def test_host_networking_gives_each_container_its_own_slice() -> None:
    plans: list[PortPlan] = []
    for _ in range(3):
        used = [r for p in plans for r in p.host_media_ranges]
        plans.append(plan(RTPENGINE, "container-address", "host", media_ports=1000, used_host_ranges=used))
    assert [p.media_range for p in plans] == [(30000, 30999), (31000, 31999), (32000, 32999)]
    for p in plans:
        assert (p.network_mode, dict(p.publish), p.forwards) == ("host", {}, ())
        assert p.host_media_ranges == (p.media_range,)
        assert any("2223/udp" in note for note in p.notes)


def test_host_slices_skip_those_other_containers_hold() -> None:
    p = plan(RTPENGINE, "container-address", "host", media_ports=1000, used_host_ranges=[(30000, 30999)])
    assert p.media_range == (31000, 31999)
    full = [(30000 + 1000 * k, 30999 + 1000 * k) for k in range(10)]
    with pytest.raises(BadInput, match="All 10 slices of 1000 media ports are taken"):
        plan(RTPENGINE, "container-address", "host", media_ports=1000, used_host_ranges=full)


def test_a_host_slice_may_span_two_of_the_profiles_ranges() -> None:
    p = plan(XMS, "container-address", "host", media_ports=2249, used_host_ranges=[(49152, 51400)])
    assert [(m.name, m.start, m.end) for m in p.media] == [("rtp", 51401, 53152), ("udp-57344", 57344, 57840)]
    assert p.media_port_count == 2249


# Labels


def test_labels_give_back_the_plan() -> None:
    p = plan(XMS, "container-address", "dnat", used_host_ranges=[(20000, 20999)])
    labels = p.labels()
    assert labels[LABEL_HOST_MEDIA] == "21000-25497"
    assert forwards_from_labels(labels) == p.forwards
    assert host_ranges_from_labels({}) == []
    assert forwards_from_labels({}) == ()


@pytest.mark.parametrize(
    "labels",
    [{LABEL_HOST_MEDIA: "30000-20000"}, {LABEL_HOST_MEDIA: "all"}],
)
def test_malformed_host_range_labels_are_refused(labels: dict[str, str]) -> None:
    with pytest.raises(BadInput, match=r"is malformed|must lie within 1-65535, low to high"):
        host_ranges_from_labels(labels)


def test_malformed_dnat_labels_are_refused() -> None:
    with pytest.raises(BadInput, match="different sizes"):
        forwards_from_labels({LABEL_DNAT: "rtp/udp:20000-20010>30000-30000"})
    with pytest.raises(BadInput, match="malformed"):
        forwards_from_labels({LABEL_DNAT: "rtp/sctp:1-2>3-4"})


@given(st.lists(st.integers(1, 4498), min_size=1, max_size=12))
def test_container_address_host_ranges_never_overlap_and_stay_in_the_pool(requests: list[int]) -> None:
    pool = POOL
    used: list[tuple[int, int]] = []
    for count in requests:
        try:
            p = plan(XMS, "container-address", "dnat", media_ports=count, used_host_ranges=list(used))
        except BadInput:
            assert max(gaps(pool, used)) < count
            continue
        (mine,) = p.host_media_ranges
        assert mine[1] - mine[0] + 1 == count
        assert pool[0] <= mine[0] <= mine[1] <= pool[1]
        assert all(mine[1] < a or b < mine[0] for a, b in used)
        used.append(mine)


def gaps(pool: tuple[int, int], used: list[tuple[int, int]]) -> list[int]:
    out, at = [], pool[0]
    for a, b in sorted(used):
        out.append(a - at)
        at = max(at, b + 1)
    out.append(pool[1] + 1 - at)
    return out


def test_carve_cuts_holes_and_keeps_each_pieces_offsets() -> None:
    forward = DnatForward("rtp", "udp", 30000, 30999, 40000, 40999)
    assert carve(forward, [30500, 31000, 29999]) == (
        DnatForward("rtp", "udp", 30000, 30499, 40000, 40499),
        DnatForward("rtp", "udp", 30501, 30999, 40501, 40999),
    )


def test_carve_at_the_edges_and_around_neighbours() -> None:
    forward = DnatForward("rtp", "udp", 100, 105, 100, 105)
    assert carve(forward, [100, 105, 102, 103, 102]) == (
        DnatForward("rtp", "udp", 101, 101, 101, 101),
        DnatForward("rtp", "udp", 104, 104, 104, 104),
    )
    assert carve(forward, []) == (forward,)
    assert carve(DnatForward("one", "udp", 7, 7, 9, 9), [7]) == ()


def test_the_xms_rtp_range_moves_the_containers_ephemeral_ports_below_it() -> None:
    assert ephemeral_outside([(49152, 53152), (57344, 57840), (5060, 5060)]) == (32768, 49151)


def test_ports_clear_of_the_kernels_range_leave_it_alone() -> None:
    assert ephemeral_outside([(30000, 30999), (2223, 2223)]) is None


def test_a_range_over_most_of_the_default_takes_the_widest_stretch_anywhere() -> None:
    # 32768-60999 is nearly all taken: the widest free stretch of 1024-65535 is below it.
    assert ephemeral_outside([(30000, 60000)]) == (1024, 29999)
    with pytest.raises(BadInput, match="no stretch of 4096 free ports"):
        ephemeral_outside([(1024, 65535)])


def test_the_plan_carries_the_range_and_says_so_but_not_with_host_networking() -> None:
    xms = builtin("xms")

    def planned(mode: str, strategy: str, profile: Profile = xms) -> PortPlan:
        plan = plan_ports(profile.ports, profile.media_ranges, mode, strategy, host_pool=POOL)
        return with_container_ephemeral(plan, profile.ports, profile.media_ranges)

    plan = planned("one-to-one", "dnat")
    assert plan.container_ephemeral == (32768, 49151)
    assert any("Ephemeral ports inside the container are 32768-49151" in note for note in plan.notes)
    assert planned("one-to-one", "host").container_ephemeral is None
    assert planned("container-address", "dnat", builtin("rtpengine")).container_ephemeral is None


def test_control_ports_without_authentication_are_bound_to_loopback_unless_told() -> None:
    ng = PortSpec("ng", "udp", 2223, 2223, "control", authenticated=False)
    web = PortSpec("web", "tcp", 80, 81, "web")
    sip = PortSpec("sip", "udp", 5060, 5060, "signalling")
    assert bind_addresses([ng, web, sip], None) == {"2223/udp": "127.0.0.1"}
    assert bind_addresses([ng, web, sip], "192.0.2.10") == {
        "2223/udp": "192.0.2.10",
        "80/tcp": "192.0.2.10",
        "81/tcp": "192.0.2.10",
    }
    assert bound({"2223/udp": None, "5060/udp": 5060}, {"2223/udp": "127.0.0.1"}) == {
        "2223/udp": ("127.0.0.1", None),
        "5060/udp": 5060,
    }


def test_bind_must_be_an_address() -> None:
    assert check_bind("::1") == "::1"
    with pytest.raises(BadInput, match=r"--bind 'localhost' is not an IP address"):
        check_bind("localhost")
