"""The address a media server advertises, and the port numbers it is told, as `run` gives them.

`run` on the in-memory host (tests/fakes.py) with the real profiles: what ends up in the container's
files, its labels and the summary.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import docker_xms
from docker_xms.adapters import hostnet
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain import ports as port_plans
from docker_xms.domain.labels import ADVERTISE_LABEL
from docker_xms.domain.profiles import parse_profile
from docker_xms.domain.recipes import profile_files
from docker_xms.errors import BadInput
from docker_xms.usecases.images import Quiet
from docker_xms.usecases.run import RunRequest, RunResult, run
from tests.unit.usecase_host import IMAGE, Host, make_host

RTPENGINE_CONF = "/etc/rtpengine/rtpengine.conf"
SIP_DEFAULTS = "/etc/default/docker-xms-sip"


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path)


def _run(host: Host, **request: object) -> RunResult:
    fields: dict[str, object] = {"image": IMAGE, "container_address": True, "name": "new", "wait": False}
    fields.update(request)
    return run(host.given, RunRequest(**fields), Quiet())


def _file(host: Host, result: RunResult, path: str) -> str:
    return host.engine.containers[result.id].files[path].decode()


@pytest.mark.parametrize("value", ["host", "container", "203.0.113.10"])
def test_advertise_takes_host_container_or_an_ipv4_address(value: str) -> None:
    assert port_plans.check_advertise(value) == value


@pytest.mark.parametrize("value", ["hostname.example", "2001:db8::1", "203.0.113.300", ""])
def test_anything_else_is_refused_in_one_sentence(value: str) -> None:
    with pytest.raises(BadInput, match=r"^--advertise .* is not host, container or an IPv4 address"):
        port_plans.check_advertise(value)


def test_a_bad_advertise_is_refused_before_anything_is_created(host: Host) -> None:
    with pytest.raises(BadInput):
        _run(host, advertise="public")
    assert not host.engine.containers


def test_container_address_mode_tells_the_server_its_host_range_and_forwards_it_unchanged(host: Host) -> None:
    result = _run(host, ports="dnat", advertise="203.0.113.10")
    (media,) = result.media
    assert (media["start"], media["end"]) == (media["host_start"], media["host_end"])
    assert media["host_start"] != 30000
    conf = _file(host, result, RTPENGINE_CONF)
    assert f"port-min = {media['host_start']}\n" in conf
    assert f"port-max = {media['host_end']}\n" in conf
    (forwards,) = host.netfilter.forwards.values()
    assert [(f.host_start, f.host_end, f.container_start, f.container_end) for f in forwards] == [
        (media["host_start"], media["host_end"], media["host_start"], media["host_end"])
    ]
    # The host range lies below the kernel's ephemeral range: the container's own is left alone.
    spec = host.engine.containers[result.id].spec
    assert spec is not None
    assert spec.sysctls == {}


def test_rtpengine_writes_the_advertised_address_into_its_interface(host: Host) -> None:
    result = _run(host, ports="dnat", advertise="203.0.113.10")
    assert "interface = pub/any!203.0.113.10;lo/127.0.0.1\n" in _file(host, result, RTPENGINE_CONF)
    assert host.engine.containers[result.id].labels[ADVERTISE_LABEL] == "203.0.113.10"
    assert (result.advertise, result.advertise_choice) == ("203.0.113.10", "address")


def test_advertise_container_leaves_the_server_its_own_address(host: Host) -> None:
    result = _run(host, ports="dnat", advertise="container")
    assert "interface = pub/any;lo/127.0.0.1\n" in _file(host, result, RTPENGINE_CONF)
    assert host.engine.containers[result.id].labels[ADVERTISE_LABEL] == "container"
    assert result.advertise_choice == "container"
    assert result.advertise == result.address


def test_advertise_host_is_the_default_route_interfaces_address(host: Host) -> None:
    result = _run(host, ports="dnat")
    assert (result.advertise, result.advertise_choice) == (hostnet.host_address(), "host")
    assert f"pub/any!{hostnet.host_address()};" in _file(host, result, RTPENGINE_CONF)


def test_the_sip_profile_is_told_the_address_and_the_host_port_of_its_signalling(host: Host) -> None:
    result = _run(host, profile="sip", ports="dnat", advertise="203.0.113.10")
    spec = host.engine.containers[result.id].spec
    assert spec is not None
    assert spec.ports is not None
    picked = spec.ports["5060/udp"]
    # Chosen before the container exists, one number for udp and tcp, from the engine's own range.
    assert isinstance(picked, int)
    assert spec.ports["5060/tcp"] == picked
    low, high = hostnet.ephemeral_ports()
    assert low <= picked <= high
    text = _file(host, result, SIP_DEFAULTS)
    assert f"ADVERTISE_ADDRESS=203.0.113.10\nSIP_PORT={picked}\n" in text


def test_the_sip_profile_in_one_to_one_mode_names_port_5060(host: Host) -> None:
    result = _run(host, profile="sip", ports="dnat", container_address=False, advertise="203.0.113.10")
    assert "ADVERTISE_ADDRESS=203.0.113.10\nSIP_PORT=5060\n" in _file(host, result, SIP_DEFAULTS)


def test_a_profile_that_cannot_be_told_says_what_to_set_by_hand(host: Host, tmp_path: Path) -> None:
    text = (Path(docker_xms.__file__).parent / "profiles" / "rtpengine.toml").read_text()
    text = text.replace('advertise = "!{address}"\n', "").replace("{advertised}", "")
    mine = tmp_path / "plain.toml"
    mine.write_text(text.replace('name = "rtpengine"', 'name = "plain"', 1))
    result = _run(host, profile=str(mine), ports="dnat", advertise="203.0.113.10")
    assert any("behind NAT with 203.0.113.10 as its public address" in note for note in result.notes)


def test_an_advertise_form_with_other_placeholders_is_refused() -> None:
    text = '[profile]\nname = "m"\n[media]\nconfig = "instance-file"\nadvertise = "!{addr}"\n'
    with pytest.raises(BadInput, match=r"field 'media.advertise' may hold only the placeholder \{address\}"):
        parse_profile(text, "m.toml")


def test_files_rendered_without_a_run_keep_the_servers_own_address() -> None:
    profile = load_profile("rtpengine", ())
    conf = next(f for f in profile_files(profile) if f.path == RTPENGINE_CONF)
    assert "interface = pub/any;lo/127.0.0.1\n" in conf.content


def test_only_the_profiles_whose_files_take_it_are_told_the_address() -> None:
    assert load_profile("rtpengine", ()).takes_advertise
    assert load_profile("sip", ()).takes_advertise
    # XMS learns its media range from the environment but keeps its "Behind NAT" setting to itself.
    assert not load_profile("xms", ()).takes_advertise
