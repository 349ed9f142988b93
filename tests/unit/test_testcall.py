"""test-call's pure parts: the profile's client, RFC 3550 jitter, where this host sends media, the verdict."""

from __future__ import annotations

import pytest

from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain.engine_types import ContainerInfo
from docker_xms.domain.labels import MANAGED_LABEL, PROFILE_LABEL
from docker_xms.domain.profiles import PortSpec, parse_profile
from docker_xms.domain.stats import interarrival_jitter_ms
from docker_xms.errors import BadInput
from docker_xms.usecases import testcall
from tests.fakes import FakeEngine

MINIMAL = """
[profile]
name = "p"
[[ports]]
name = "sip"
protocol = "udp"
port = 5060
role = "signalling"
"""


def info(**kwargs: object) -> ContainerInfo:
    base: dict[str, object] = {
        "id": "c1", "name": "c", "status": "running", "pid": 1, "image": "i", "labels": {},
        "ip_address": "172.17.0.5", "cpu_rt_runtime": 0, "cpu_rt_period": 1_000_000, "cgroup_parent": "",
    }  # fmt: skip
    return ContainerInfo(**{**base, **kwargs})  # type: ignore[arg-type]


def test_shipped_profiles_name_their_test_call_client() -> None:
    assert load_profile("rtpengine").test_call == "rtpengine-ng"
    assert load_profile("sip").test_call == "sipp"
    assert load_profile("xms").test_call == ""
    assert load_profile("janus").test_call == "janus-echo"
    assert "docker-xms test-call {name}" in load_profile("sip").summary


def test_a_test_call_client_is_validated_at_load() -> None:
    assert parse_profile(MINIMAL + '[test_call]\nclient = "sipp"\n', "p.toml").test_call == "sipp"
    with pytest.raises(
        BadInput, match=r"field 'test_call\.client' must be one of rtpengine-ng, sipp, janus-echo, not 'pjsua'"
    ):
        parse_profile(MINIMAL + '[test_call]\nclient = "pjsua"\n', "p.toml")
    with pytest.raises(BadInput, match="rtpengine-ng needs a single udp port with role 'control'"):
        parse_profile(MINIMAL + '[test_call]\nclient = "rtpengine-ng"\n', "p.toml")
    with pytest.raises(BadInput, match=r"field 'test_call\.port' is not a known setting"):
        parse_profile(MINIMAL + "[test_call]\nport = 1\n", "p.toml")


def test_jitter_of_a_steady_stream_is_zero_and_follows_rfc_3550() -> None:
    steady = [(160 * i, 20_000_000 * i) for i in range(50)]
    assert interarrival_jitter_ms(steady, 8000) == 0.0
    # One packet 1 ms late: |D| = 8 units then 8 again; J = 8/16, then J += (8 - J)/16.
    late = [(0, 0), (160, 21_000_000), (320, 40_000_000)]
    first = 8 / 16
    assert interarrival_jitter_ms(late, 8000) == pytest.approx((first + (8 - first) / 16) / 8)
    # Timestamps wrap at 2^32 without a jump in jitter.
    wrapped = [((2**32 - 160 + 160 * i) % 2**32, 20_000_000 * i) for i in range(3)]
    assert interarrival_jitter_ms(wrapped, 8000) == 0.0


def test_media_for_the_hosts_own_address_goes_to_the_container_port_it_maps_to() -> None:
    dnat = info(labels={"io.docker-xms.dnat": "rtp/udp:10000-10999>30000-30999"})
    assert testcall.direct_target(dnat, ("192.0.2.2", 10040), local_target=True) == ("172.17.0.5", 30040)
    assert testcall.direct_target(dnat, ("192.0.2.2", 10040), local_target=False) == ("192.0.2.2", 10040)
    published = info(ports={"30001/udp": [{"HostIp": "0.0.0.0", "HostPort": "30001"}]})
    assert testcall.direct_target(published, ("192.0.2.2", 30001), local_target=True) == ("172.17.0.5", 30001)
    host_network = info(ip_address="")
    assert testcall.direct_target(host_network, ("192.0.2.2", 30001), local_target=True) == ("192.0.2.2", 30001)


def test_the_ng_port_is_reached_where_it_is_published() -> None:
    ng = PortSpec("ng", "udp", 2223, 2223, "control")
    loopback = info(ports={"2223/udp": [{"HostIp": "127.0.0.1", "HostPort": "33751"}]})
    assert testcall.published_endpoint(loopback, ng) == ("127.0.0.1", 33751)
    everywhere = info(ports={"2223/udp": [{"HostIp": "0.0.0.0", "HostPort": "2223"}]})
    assert testcall.published_endpoint(everywhere, ng) == ("127.0.0.1", 2223)
    assert testcall.published_endpoint(info(), ng) == ("172.17.0.5", 2223)


def test_the_verdict_needs_an_answer_and_nine_tenths_of_the_packets_each_way() -> None:
    def result(answered: bool, *pairs: tuple[int, int]) -> testcall.TestCallResult:
        directions = tuple(testcall.Direction(f"d{i}", s, r, None) for i, (s, r) in enumerate(pairs))
        return testcall.TestCallResult("c", "p", "sipp", "a:1", "b", answered, directions, "counted", None, "503")

    assert result(True, (100, 90), (100, 100)).ok
    assert result(True, (100, 89), (100, 100)).problem() == (
        "Media did not flow through c: d0 received 89 of 100 packets (at least 90% must arrive)."
    )
    assert not result(True, (0, 0), (0, 0)).ok
    assert result(False, (100, 100), (100, 100)).problem() == "The test call through c was not answered: 503."


def test_a_missing_sipp_names_its_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from docker_xms.adapters import sipp

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(sipp.SippMissing, match="install the Debian package sip-tester") as raised:
        sipp.sipp_path()
    assert raised.value.exit_code == 1


def test_control_is_the_published_endpoint_unless_given_and_a_bad_one_is_refused() -> None:
    published = ("127.0.0.1", 2223)
    assert testcall.control_endpoint(None, published) == published
    assert testcall.control_endpoint("172.17.0.2", published) == ("172.17.0.2", 2223)
    assert testcall.control_endpoint("172.17.0.2:2300", published) == ("172.17.0.2", 2300)
    for bad in ("host.example", "172.17.0.2:x", "172.17.0.2:0", "/etc/passwd"):
        with pytest.raises(BadInput, match=r"^--control"):
            testcall.control_endpoint(bad, published)


def test_control_for_a_profile_whose_client_uses_no_ng_port_is_refused_not_ignored() -> None:
    engine = FakeEngine()
    engine.add("calls", {MANAGED_LABEL: "true", PROFILE_LABEL: "sip"}, running=True)
    request = testcall.TestCallRequest("calls", control="172.17.0.2:2223")
    with pytest.raises(BadInput, match=r"^--control names rtpengine's ng port; profile sip's test call does not"):
        testcall.test_call(engine, load_profile, request)
