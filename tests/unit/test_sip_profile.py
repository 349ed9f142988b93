"""The `sip` profile's data, and the placeholders every instance file may use."""

from __future__ import annotations

import pytest

from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain.profiles import parse_profile
from docker_xms.domain.recipes import RenderedFile, profile_files
from docker_xms.errors import BadInput
from docker_xms.usecases.readiness import SIP_OPTIONS, health_script


def _file(files: list[RenderedFile], path: str) -> str:
    return next(f.content for f in files if f.path == path)


def test_sip_profile_runs_kamailio_and_rtpengine_with_an_options_check() -> None:
    sip = load_profile("sip")
    assert {(p.name, p.protocol, p.start) for p in sip.ports} == {("sip", "udp", 5060), ("sip-tcp", "tcp", 5060)}
    assert [r.label() for r in sip.media_ranges] == ["30000-30999/udp"]
    assert set(sip.readiness.required_units) == {"kamailio.service", "rtpengine-daemon.service"}
    assert sip.readiness.check == "sip-options"
    assert {"kamailio", "rtpengine-daemon"} <= set(sip.build.packages)
    assert sip.variables["allowed_networks"] == "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,127.0.0.0/8"


def test_sip_profile_defaults_to_the_containers_own_address() -> None:
    files = profile_files(load_profile("sip"), 31000, 31099)
    env = _file(files, "/etc/default/docker-xms-sip")
    assert "ADVERTISE_ADDRESS=\n" in env
    assert "SIP_PORT=5060\n" in env
    assert "ALLOWED_NETWORKS=10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,127.0.0.0/8\n" in env
    conf = _file(files, "/etc/rtpengine/rtpengine.conf")
    assert "port-min = 31000" in conf
    assert "port-max = 31099" in conf
    assert "listen-ng = 127.0.0.1:2223" in conf


def test_advertised_address_and_signalling_port_reach_the_instance_file() -> None:
    files = profile_files(load_profile("sip"), values={"advertise_address": "203.0.113.7", "sip_port": 15060})
    env = _file(files, "/etc/default/docker-xms-sip")
    assert "ADVERTISE_ADDRESS=203.0.113.7\n" in env
    assert "SIP_PORT=15060\n" in env


def test_verbatim_files_keep_their_braces() -> None:
    files = profile_files(load_profile("sip"))
    script = _file(files, "/etc/kamailio/kamailio.cfg")
    assert "request_route {" in script
    assert 'is_in_subnet("$si", "ALLOWED_NETWORKS")' in script
    assert "${RTPENGINE_INTERFACE}" in _file(files, "/etc/systemd/system/rtpengine-daemon.service")
    setup = next(f for f in files if f.path == "/usr/local/sbin/docker-xms-sip-setup")
    assert setup.mode == 0o755
    assert "!$ADVERTISE_ADDRESS" in setup.content


BASE = """
[profile]
name = "vars"

[[ports]]
name = "sip"
protocol = "udp"
port = 5060
host_port = 5080
"""


def test_profile_vars_and_port_placeholders_render() -> None:
    text = BASE + '[vars]\nrealm = "example.org"\n\n[[instance_files]]\npath = "/x"\ntemplate = "{realm} {sip_port}"\n'
    profile = parse_profile(text, "vars.toml")
    assert profile_files(profile)[0].content == "example.org 5080"
    assert profile_files(profile, values={"realm": "other"})[0].content == "other 5080"


def test_an_unknown_placeholder_is_refused_unless_the_file_is_verbatim() -> None:
    unknown = BASE + '[[instance_files]]\npath = "/x"\ntemplate = "{nowhere}"\n'
    with pytest.raises(BadInput, match="placeholder that is not known: 'nowhere'"):
        parse_profile(unknown, "vars.toml")
    verbatim = BASE + '[[instance_files]]\npath = "/x"\ntemplate = "{nowhere}"\nverbatim = true\n'
    assert profile_files(parse_profile(verbatim, "vars.toml"))[0].content == "{nowhere}"


def test_a_profile_var_must_be_a_string() -> None:
    with pytest.raises(BadInput, match=r"field 'vars.count' must be a string"):
        parse_profile(BASE + "[vars]\ncount = 3\n", "vars.toml")


def test_health_script_sends_options_to_the_sip_port() -> None:
    script = health_script(load_profile("sip"))
    assert SIP_OPTIONS.format(port=5060) in script
    assert "systemctl is-active --quiet kamailio.service rtpengine-daemon.service" in script
