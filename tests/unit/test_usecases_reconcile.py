"""Reconcile beside managed containers whose labels cannot be read: they are skipped and reported, keep their
budget and rules, and the others are set right. In-memory fakes (tests/fakes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from docker_xms.domain.forwards import DnatForward
from docker_xms.usecases.adoption import held_plans
from docker_xms.usecases.reconcile import live_forwards, reconcile
from tests.unit.usecase_host import Host, make_host


@pytest.fixture
def host(tmp_path: Path) -> Host:
    host = make_host(tmp_path)
    host.fs.write_runtime("/docker", 950_000)
    return host


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


def test_media_of_a_server_that_advertises_a_host_address_leaves_from_it_and_of_one_that_does_not_from_nowhere(
    host: Host,
) -> None:
    advertised = host.managed("advertised", dnat="rtp/udp:30000-30009>30000-30009", advertise="192.0.2.2")
    own = host.managed("own", dnat="rtp/udp:31000-31009>31000-31009")
    asked: list[str] = []

    def source(label: str) -> str:
        asked.append(label)
        return "" if label == "container" else f"from-{label}"

    live = live_forwards(
        host.engine, host.netfilter, held_plans(host.rt.settings), sources=source, listeners=host.rt.listening
    )
    assert [f.source_ip for f in live[advertised.id]] == ["from-192.0.2.2"]
    assert [f.source_ip for f in live[own.id]] == [""]
    assert sorted(asked) == ["192.0.2.2", "container"]


def test_labels_copied_onto_a_container_docker_xms_did_not_create_gain_nothing_of_the_original(host: Host) -> None:
    original = host.managed("original", dnat="rtp/udp:30000-30009>30000-30009", host_media="30000-30009")
    # `docker inspect` then `docker run --label ...`: the same labels, another id, no record.
    copy = host.managed("copy", dnat="rtp/udp:30000-30009>30000-30009", host_media="30000-30009", recorded=False)
    host.settle()
    assert [f.host_start for f in host.netfilter.forwards[original.id[:12]]] == [30000]
    # Adopted as any container asking to be managed: its own plan from the pool, never the original's range.
    assert [(f.host_start, f.host_end) for f in host.netfilter.forwards[copy.id[:12]]] == [(10000, 10999)]


@pytest.mark.parametrize(
    ("labels", "why"),
    [
        ({"io.docker-xms.dnat": "x/tcp:8222-8222>8222-8222"}, "outside the media port pool"),
        ({"io.docker-xms.dnat": "x/udp:0-0>0-0"}, "1-65535"),
        ({"io.docker-xms.dnat": "x/udp:70000-70000>70000-70000"}, "1-65535"),
        ({"io.docker-xms.dnat": f"{'n' * 65}/udp:20000-20000>20000-20000"}, "malformed"),
        ({"io.docker-xms.rt-weight": "1000000"}, "from 1 to 100"),
        ({"io.docker-xms.host-media-ports": "1-65535"}, "outside the media port pool"),
        ({"io.docker-xms.profile": "../../etc/shadow"}, "not a profile name"),
    ],
)
def test_a_container_with_hostile_labels_is_skipped_and_reported_and_the_others_go_on(
    host: Host, labels: dict[str, str], why: str
) -> None:
    good = host.managed("good", dnat="rtp/udp:30000-30009>30000-30009", host_media="30000-30009")
    gone = host.managed("gone", dnat="rtp/udp:31000-31009>31000-31009", host_media="31000-31009")
    host.settle()
    hostile = host.engine.add(
        "hostile", {"io.docker-xms.managed": "true", "io.docker-xms.profile": "rtpengine", **labels}
    )
    host.engine.vanish(gone.id)

    result = reconcile(host.rt, host.netfilter)

    assert [s.name for s in result.budgets.skipped] == ["hostile"]
    assert why in result.budgets.skipped[0].reason
    assert hostile.id[:12] not in host.netfilter.forwards
    assert host.runtime(hostile) == 0
    # The others: the good one keeps its budget and rule, the hand-removed one's rule goes.
    assert host.runtime(good) == 950_000
    assert [f.host_start for f in host.netfilter.forwards[good.id[:12]]] == [30000]
    assert gone.id[:12] not in host.netfilter.forwards


def test_a_port_a_host_process_listens_on_is_cut_out_of_every_forward(host: Host) -> None:
    server = host.managed("server", dnat="rtp/udp:30000-30009>30000-30009", host_media="30000-30009")
    live = live_forwards(
        host.engine, host.netfilter, held_plans(host.rt.settings), listeners=lambda: {"udp": {30004}, "tcp": {30006}}
    )
    # The udp listener splits the udp range; a tcp listener on another port number changes nothing for udp.
    assert [(f.host_start, f.host_end) for f in live[server.id]] == [(30000, 30003), (30005, 30009)]
