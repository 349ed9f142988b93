"""Where a container's media leaves the host from, and which conntrack entries a forward's change forgets."""

from __future__ import annotations

from docker_xms.adapters.conntrack import Entry, Tuple, parse_entries, stale
from docker_xms.adapters.hostnet import LocalAddresses, parse_local_routes
from docker_xms.domain.forwards import DnatForward, media_source

LOCAL_TABLE = """\
local 127.0.0.0/8 dev lo proto kernel scope host src 127.0.0.1
local 127.0.0.1 dev lo proto kernel scope host src 127.0.0.1
local 172.17.0.1 dev docker0 proto kernel scope host src 172.17.0.1
local 192.0.2.2 dev eth0 proto kernel scope host src 192.0.2.2
"""

LISTING = """\
udp      17 29 src=10.199.1.2 dst=192.0.2.2 sport=42662 dport=10074 [UNREPLIED] src=172.17.0.2 dst=10.199.1.2 \
sport=10075 dport=42662 mark=0 use=1
udp      17 118 src=172.17.0.2 dst=10.199.1.2 sport=10074 dport=42662 src=10.199.1.2 dst=10.199.1.1 sport=42662 \
dport=10074 [ASSURED] mark=0 use=1
udp      17 25 src=192.0.2.2 dst=198.51.100.9 sport=40000 dport=10080 src=198.51.100.9 dst=192.0.2.2 \
sport=10080 dport=40000 mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.0.0.5 dst=192.0.2.2 sport=5555 dport=10074 src=192.0.2.2 dst=10.0.0.5 \
sport=10074 dport=5555 [ASSURED] mark=0 use=1
icmp     1 29 src=10.0.0.5 dst=192.0.2.2 type=8 code=0 id=7 src=192.0.2.2 dst=10.0.0.5 type=0 code=0 id=7 mark=0 use=1
"""

FORWARD = DnatForward("rtp", "udp", 10000, 10999, 10000, 10999, "172.17.0.2")


def local() -> LocalAddresses:
    return LocalAddresses(tuple(parse_local_routes(LOCAL_TABLE)))


def test_media_leaves_from_the_advertised_address_where_this_host_holds_it() -> None:
    assert media_source("192.0.2.2", local().holds, "192.0.2.2") == "192.0.2.2"
    assert media_source("127.0.0.1", local().holds, "192.0.2.2") == "127.0.0.1"


def test_behind_a_nat_router_media_leaves_from_the_default_route_address() -> None:
    # 203.0.113.10 is the router's: the router maps the host's address back to it.
    assert media_source("203.0.113.10", local().holds, "192.0.2.2") == "192.0.2.2"


def test_a_server_that_advertises_its_container_address_or_no_address_keeps_the_engines_masquerade() -> None:
    for advertised in ("container", "", "not-an-address", "2001:db8::1", "192.0.2.2; rm -rf /"):
        assert media_source(advertised, local().holds, "192.0.2.2") == ""


def test_every_loopback_address_counts_as_local() -> None:
    assert local().holds("127.0.0.53")
    assert not local().holds("172.17.0.2")
    assert not local().holds("garbage")


def test_conntrack_listing_is_read_both_directions_and_other_protocols_skipped() -> None:
    entries = parse_entries(LISTING)
    assert [e.protocol for e in entries] == ["udp", "udp", "udp", "tcp"]
    assert entries[0] == Entry(
        "udp", Tuple("10.199.1.2", "192.0.2.2", 42662, 10074), Tuple("172.17.0.2", "10.199.1.2", 10075, 42662)
    )


def test_a_forward_forgets_peers_flows_to_its_ports_and_the_containers_own_but_not_the_hosts_outgoing() -> None:
    entries = parse_entries(LISTING)
    doomed = stale(entries, [FORWARD], local().holds)
    # The peer's misrouted flow (to a host port of the range), the container's masqueraded one; not the
    # host's own connection to a remote port 10080, not the TCP flow (another protocol).
    assert doomed == entries[:2]


def test_a_forward_of_other_ports_forgets_nothing() -> None:
    other = DnatForward("rtp", "udp", 20000, 20999, 20000, 20999, "172.17.0.3")
    assert stale(parse_entries(LISTING), [other], local().holds) == []
