"""Reconcile beside managed containers whose labels cannot be read: they are skipped and reported, keep their
budget and rules, and the others are set right. In-memory fakes (tests/fakes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from docker_xms.domain.forwards import DnatForward
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

    live = live_forwards(host.engine, host.netfilter, sources=source)
    assert [f.source_ip for f in live[advertised.id]] == ["from-192.0.2.2"]
    assert [f.source_ip for f in live[own.id]] == [""]
    assert sorted(asked) == ["192.0.2.2", "container"]
