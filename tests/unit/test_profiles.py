from __future__ import annotations

from pathlib import Path

import pytest

from docker_xms.adapters.profile_store import list_profiles, load_profile
from docker_xms.domain.profiles import parse_profile
from docker_xms.errors import BadInput, NotFound


def test_builtin_profiles_load() -> None:
    names = {p.name for p in list_profiles()}
    assert {"rtpengine", "xms"} <= names


def test_xms_profile_has_the_installer_ports() -> None:
    xms = load_profile("xms")
    tcp = sorted(p.start for p in xms.ports if p.protocol == "tcp")
    assert tcp == [22, 80, 81, 443, 1080, 5060, 10443, 15001]
    assert [p.label() for p in xms.media_ranges] == ["49152-53152/udp", "57344-57840/udp"]
    assert xms.media_port_count == 4498
    assert "/var/lib/xms/meters" in xms.tmpfs
    assert set(xms.readiness.allowed_down) == {"faxservice", "cdrserver"}
    ssh = next(p for p in xms.ports if p.role == "ssh")
    assert (ssh.start, ssh.host_port) == (22, 2222)


def test_rtpengine_profile_renders_its_media_range() -> None:
    rtp = load_profile("rtpengine")
    conf = next(f for f in rtp.instance_files if f.path == "/etc/rtpengine/rtpengine.conf")
    text = conf.render(
        {"media_start": 31000, "media_end": 31099, "name": "x", "profile": "rtpengine", "advertised": ""}
    )
    assert "port-min = 31000" in text
    assert "port-max = 31099" in text


MINIMAL = """
[profile]
name = "mini"
image = "mini:latest"

[[ports]]
name = "sip"
protocol = "udp"
port = 5060
role = "signalling"
"""


def test_minimal_profile() -> None:
    profile = parse_profile(MINIMAL, "mini.toml")
    assert profile.ports[0].label() == "5060/udp"
    assert profile.readiness.systemd is True


@pytest.mark.parametrize(
    ("change", "field", "line"),
    [
        (('protocol = "udp"', 'protocol = "sctp"'), "ports[0].protocol", 8),
        (("port = 5060", "port = 70000"), "ports[0].port", 9),
        (("port = 5060", 'port = "5060"'), "ports[0].port", 9),
        (('role = "signalling"', 'role = "voice"'), "ports[0].role", 10),
        (('name = "mini"', 'name = "Mini Server"'), "profile.name", 3),
    ],
)
def test_malformed_profile_names_file_line_and_field(change: tuple[str, str], field: str, line: int) -> None:
    text = MINIMAL.replace(*change)
    with pytest.raises(BadInput) as info:
        parse_profile(text, "/etc/x/mini.toml")
    message = info.value.message
    assert "/etc/x/mini.toml" in message
    assert f"line {line}" in message
    assert f"'{field}'" in message


def test_invalid_toml_is_refused_with_position() -> None:
    with pytest.raises(BadInput, match=r"mini.toml is not valid TOML.*line 2"):
        parse_profile("[profile]\nname = \nimage = 'x'\n", "mini.toml")


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(BadInput, match=r"'profile\.colour' is not a known setting"):
        parse_profile(MINIMAL.replace('image = "mini:latest"', 'colour = "red"'), "m.toml")


def test_second_table_entry_is_located() -> None:
    text = MINIMAL + '\n[[ports]]\nname = "b"\nprotocol = "tcp"\nport = 0\n'
    with pytest.raises(BadInput, match=r"line 15, field 'ports\[1\].port'"):
        parse_profile(text, "m.toml")


def test_overlapping_ports_are_refused() -> None:
    text = MINIMAL + '\n[media]\n[[media.ranges]]\nname = "rtp"\nprotocol = "udp"\nrange = "5000-6000"\n'
    with pytest.raises(BadInput, match="overlap"):
        parse_profile(text, "m.toml")


def test_user_profiles_shadow_and_extend(tmp_path: Path) -> None:
    (tmp_path / "mini.toml").write_text(MINIMAL)
    assert load_profile("mini", [tmp_path]).source == str(tmp_path / "mini.toml")
    with pytest.raises(NotFound, match=r"known profiles: .*mini"):
        load_profile("nothing-here", [tmp_path])


MEDIA = """
[media]
config = "env"

[[media.ranges]]
name = "rtp"
protocol = "udp"
range = "30000-30099"

[[media.ranges]]
protocol = "udp"
range = "31000-31009"

[readiness]
check = "none"
"""


def test_media_range_without_a_name_is_refused_at_load_with_its_line(tmp_path: Path) -> None:
    # Its name goes into the container's port-rule label; without one that label would not parse back.
    path = tmp_path / "noname.toml"
    path.write_text(MINIMAL + MEDIA)
    with pytest.raises(BadInput) as info:
        load_profile(str(path))
    assert info.value.message == (
        f"Profile {path}: line 20, field 'media.ranges[1].name' is missing; every media range needs one."
    )


def test_media_range_name_must_fit_the_port_rule_label(tmp_path: Path) -> None:
    path = tmp_path / "slash.toml"
    path.write_text(MINIMAL + MEDIA.replace('range = "31000-31009"', 'name = "rtp/b"\nrange = "31000-31009"'))
    with pytest.raises(BadInput, match=r"line 22, field 'media\.ranges\[1\]\.name' must be letters.*not 'rtp/b'"):
        load_profile(str(path))


def test_host_port_whose_range_runs_past_65535_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "high.toml"
    path.write_text(MINIMAL + '\n[[ports]]\nname = "web"\nprotocol = "tcp"\nrange = "8000-8009"\nhost_port = 65530\n')
    with pytest.raises(BadInput) as info:
        load_profile(str(path))
    assert info.value.message == (
        f"Profile {path}: line 16, field 'ports[1].host_port' leaves no room for the 10 ports of the range below 65536."
    )
    path.write_text(path.read_text().replace("65530", "65526"))
    assert load_profile(str(path)).ports[1].host_port == 65526


def test_a_key_is_looked_for_in_its_own_table_only() -> None:
    # A missing field is placed at its own table's header, not at the same key of a later table.
    text = MINIMAL + MEDIA.replace('name = "rtp"\n', "")
    with pytest.raises(BadInput, match=r"line 15, field 'media\.ranges\[0\]\.name' is missing"):
        parse_profile(text, "m.toml")


def test_only_a_control_or_management_port_can_be_marked_without_authentication() -> None:
    ng = parse_profile(MINIMAL.replace('role = "signalling"', 'role = "control"\nauthenticated = false'), "m.toml")
    assert ng.ports[0].authenticated is False
    assert load_profile("rtpengine").ports[0].authenticated is False
    with pytest.raises(BadInput, match=r"line 11, field 'ports\[0\]\.authenticated' can be false only on a control"):
        parse_profile(MINIMAL.replace('role = "signalling"', 'role = "signalling"\nauthenticated = false'), "m.toml")


def test_rt_threads_are_read_and_must_be_a_list_of_names() -> None:
    assert parse_profile(MINIMAL, "m.toml").rt_threads == ()
    with_threads = MINIMAL.replace(
        'image = "mini:latest"', 'image = "mini:latest"\nrt_threads = ["poller", "send timer"]'
    )
    assert parse_profile(with_threads, "m.toml").rt_threads == ("poller", "send timer")
    with pytest.raises(BadInput, match="rt_threads"):
        parse_profile(MINIMAL.replace('image = "mini:latest"', 'image = "mini:latest"\nrt_threads = [5]'), "m.toml")
    assert load_profile("rtpengine").rt_threads == ("poller", "codec timer", "media player", "send timer")
    assert load_profile("sip").rt_threads == load_profile("rtpengine").rt_threads
