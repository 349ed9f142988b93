"""Adoption by label: how a container was started, the plan chosen for one that carries none, and the
reconciler keeping those plans (in-memory fakes of tests/fakes.py, the real plan file in a temporary dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from docker_xms.adapters import adoption_store
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain.adoption import origin, plan_labels, trusted_labels
from docker_xms.domain.compose import ComposeOptions, service_labels
from docker_xms.domain.forwards import DnatForward
from docker_xms.domain.labels import (
    ADVERTISE_LABEL,
    LABEL_DNAT,
    LABEL_HOST_MEDIA,
    LABEL_STRATEGY,
    MANAGED_LABEL,
    MODE_LABEL,
    PROFILE_LABEL,
    REFUSED_LABEL,
)
from docker_xms.errors import BadInput
from docker_xms.usecases.reconcile import reconcile
from tests.unit.usecase_host import Host, make_host

COMPOSE = {"com.docker.compose.project": "shop", "com.docker.compose.service": "rtpengine"}
SWARM = {"com.docker.swarm.service.name": "media_rtp", "com.docker.swarm.task.name": "media_rtp.3.k2j4h5g6f7d8"}
ADOPTABLE = {MANAGED_LABEL: "true", PROFILE_LABEL: "rtpengine"}
POOL = (10000, 32767)


def test_origin_is_read_from_the_engines_own_labels() -> None:
    assert origin({**ADOPTABLE, **SWARM}) == "swarm:media_rtp.3"
    assert origin(
        {**ADOPTABLE, "com.docker.swarm.service.name": "agent", "com.docker.swarm.task.name": "agent.n0de1d.t4sk"}
    ) == ("swarm:agent.n0de1d")
    assert origin({**ADOPTABLE, **COMPOSE}) == "compose:shop"
    assert origin({**ADOPTABLE, LABEL_STRATEGY: "dnat", ADVERTISE_LABEL: "container"}) == "run"
    assert origin(ADOPTABLE) == "docker"


def test_what_docker_xms_decided_stands_and_a_containers_own_claims_are_dropped() -> None:
    pool = ((10000, 32767),)
    claims = {**ADOPTABLE, LABEL_DNAT: "x/tcp:22-22>22-22", LABEL_HOST_MEDIA: "20000-20999", ADVERTISE_LABEL: "1.2.3.4"}
    decided = {LABEL_DNAT: "rtp/udp:11000-11999>30000-30999", LABEL_HOST_MEDIA: "11000-11999"}
    assert trusted_labels(claims, decided, pool) == {**ADOPTABLE, **decided}
    # Without a decision, in-pool claims are only dropped; out-of-pool or malformed ones mark it refused.
    assert trusted_labels({**ADOPTABLE, LABEL_HOST_MEDIA: "20000-20999"}, None, pool) == ADOPTABLE
    refused = trusted_labels(claims, None, pool)
    assert "outside the media port pool" in refused[REFUSED_LABEL]
    assert LABEL_DNAT not in refused
    # A container cannot mark itself, nor unmark itself.
    assert trusted_labels({**ADOPTABLE, REFUSED_LABEL: "x"}, None, pool) == ADOPTABLE


def test_a_dnat_plan_forwards_the_servers_own_ports_onto_themselves_when_they_are_free() -> None:
    # The server's configuration is in its image: its SDP names its own ports, right when the host's are the same.
    profile = load_profile("rtpengine")
    labels = plan_labels(profile, ADOPTABLE, "bridge", [(10000, 10999), (11500, 11600)], POOL)
    assert labels[LABEL_STRATEGY] == "dnat"
    assert labels[MODE_LABEL] == "container-address"
    assert labels[LABEL_HOST_MEDIA] == "30000-30999"
    assert labels[LABEL_DNAT] == "rtp/udp:30000-30999>30000-30999"


def test_a_dnat_plan_takes_the_first_free_block_when_its_own_ports_are_held_or_outside_the_pool() -> None:
    profile = load_profile("rtpengine")
    held = plan_labels(profile, ADOPTABLE, "bridge", [(10000, 10999), (11500, 11600), (30500, 30500)], POOL)
    assert held[LABEL_HOST_MEDIA] == "11601-12600"
    assert held[LABEL_DNAT] == "rtp/udp:11601-12600>30000-30999"
    outside = plan_labels(profile, ADOPTABLE, "bridge", [], (10000, 29999))
    assert outside[LABEL_HOST_MEDIA] == "10000-10999"


def test_host_networking_holds_the_profiles_own_range_and_refuses_it_when_taken() -> None:
    profile = load_profile("rtpengine")
    labels = plan_labels(profile, ADOPTABLE, "host", [], POOL)
    assert labels[LABEL_STRATEGY] == "host"
    assert labels[LABEL_HOST_MEDIA] == "30000-30999"
    assert LABEL_DNAT not in labels
    with pytest.raises(BadInput, match="held by another container"):
        plan_labels(profile, ADOPTABLE, "host", [(30500, 30600)], POOL)
    with pytest.raises(BadInput, match="without host networking"):
        plan_labels(profile, {**ADOPTABLE, LABEL_STRATEGY: "host"}, "bridge", [], POOL)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    host = make_host(tmp_path)
    host.fs.write_runtime("/docker", 950_000)
    return host


def compose_replica(host: Host, name: str, running: bool = True):  # type: ignore[no-untyped-def]
    labels = {**service_labels(load_profile("rtpengine"), ComposeOptions()), **COMPOSE}
    return host.engine.add(name, labels, running=running)


def test_replicas_started_by_compose_get_budgets_distinct_ranges_and_one_rule_each(host: Host) -> None:
    # `run` keeps its host range in its record (and a copy in a label); an adopted plan must take another.
    run_made = host.managed("run-made", dnat="rtp/udp:10000-10999>10000-10999", host_media="10000-10999")
    a = compose_replica(host, "shop_rtpengine_1")
    b = compose_replica(host, "shop_rtpengine_2")

    result = reconcile(host.rt, host.netfilter)

    assert sorted(x.name for x in result.adoption.adopted) == ["shop_rtpengine_1", "shop_rtpengine_2"]
    assert {x.origin for x in result.adoption.adopted} == {"compose:shop"}
    # rtpengine's ports lie below the kernel's ephemeral range: nothing to move.
    assert {x.ephemeral for x in result.adoption.adopted} == {None}
    assert host.runtime(a) == host.runtime(b) == host.runtime(run_made) == 316_666
    forwards = dict(host.netfilter.forwards)
    # The first keeps its own port numbers on the host; the second takes the first free block.
    assert forwards[a.id[:12]] == [DnatForward("rtp", "udp", 30000, 30999, 30000, 30999, a.ip_address)]
    assert forwards[b.id[:12]] == [DnatForward("rtp", "udp", 11000, 11999, 30000, 30999, b.ip_address)]
    plans = adoption_store.load(adoption_store.path_for(host.rt.settings.lock_path))
    assert set(plans) == {a.id, b.id}

    # A second pass changes nothing: the plans are kept, not chosen again.
    again = reconcile(host.rt, host.netfilter)
    assert again.adoption.adopted == ()
    assert host.netfilter.forwards == forwards


def test_a_stopped_or_removed_replica_gives_its_budget_range_and_rule_back(host: Host) -> None:
    a = compose_replica(host, "shop_rtpengine_1")
    b = compose_replica(host, "shop_rtpengine_2")
    reconcile(host.rt, host.netfilter)
    host.engine.stop(a.id)
    host.engine.vanish(b.id)

    result = reconcile(host.rt, host.netfilter)

    assert set(result.adoption.released) == {a.id, b.id}
    assert host.netfilter.forwards == {}
    assert adoption_store.load(adoption_store.path_for(host.rt.settings.lock_path)) == {}
    # Started again: a range again, its own numbers, free again.
    host.engine.start(a.id)
    reconcile(host.rt, host.netfilter)
    assert [f.host_start for f in host.netfilter.forwards[a.id[:12]]] == [30000]
    assert host.runtime(a) == 950_000


def test_a_replica_whose_profile_is_unknown_gets_its_budget_and_is_reported(host: Host) -> None:
    odd = host.engine.add("odd", {MANAGED_LABEL: "true", PROFILE_LABEL: "no-such-profile"})
    result = reconcile(host.rt, host.netfilter)
    assert [r.name for r in result.adoption.refused] == ["odd"]
    assert "no-such-profile" in result.adoption.refused[0].sentence()
    assert host.runtime(odd) == 950_000
    assert host.netfilter.forwards == {}


def test_the_adopt_setting_limits_which_containers_are_managed(tmp_path: Path) -> None:
    from dataclasses import replace

    host = make_host(tmp_path)
    host.fs.write_runtime("/docker", 950_000)
    host.rt = replace(host.rt, settings=replace(host.rt.settings, adopt="compose"))
    replica = compose_replica(host, "shop_rtpengine_1")
    by_hand = host.engine.add("by-hand", dict(ADOPTABLE))

    result = reconcile(host.rt, host.netfilter)

    assert [a.name for a in result.adoption.adopted] == ["shop_rtpengine_1"]
    assert [s.name for s in result.budgets.skipped] == ["by-hand"]
    assert "setting adopt" in result.budgets.skipped[0].reason
    assert (host.runtime(replica), host.runtime(by_hand)) == (950_000, 0)
    assert by_hand.id[:12] not in host.netfilter.forwards
