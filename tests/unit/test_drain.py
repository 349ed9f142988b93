"""A profile's [drain] table: parsed, refused when malformed, and turned into the image's drain unit."""

from __future__ import annotations

import pytest

from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain.drain_unit import DRAIN_SCRIPT, DRAIN_UNIT
from docker_xms.domain.profiles import parse_profile
from docker_xms.errors import BadInput

MINIMAL = """
[profile]
name = "p"
image = "p:1"

[readiness]
required_units = ["media.service"]
"""


def test_a_drain_adds_its_unit_ordered_after_the_servers_units_and_its_script_to_the_image() -> None:
    profile = parse_profile(MINIMAL + '[drain]\ngrace = 20\ncommand = "wait-for {sessions}"\n', "p.toml")
    assert profile.drain.grace_s == 20
    assert profile.drain.before == ("media.service",)
    assert DRAIN_UNIT in profile.build.enable_units
    files = {f.path: f for f in profile.build.files}
    unit = files["/etc/systemd/system/" + DRAIN_UNIT].render({})
    assert "After=media.service" in unit
    assert f"ExecStop=/bin/bash {DRAIN_SCRIPT}" in unit
    assert "TimeoutStopSec=20" in unit
    # Written as it is: a shell command's braces are no placeholders.
    assert "wait-for {sessions}" in files[DRAIN_SCRIPT].render({})


def test_without_a_drain_the_image_is_as_before() -> None:
    profile = parse_profile(MINIMAL, "p.toml")
    assert profile.drain.command == ""
    assert DRAIN_UNIT not in profile.build.enable_units
    assert profile.build.files == ()


@pytest.mark.parametrize(
    ("table", "sentence"),
    [
        ('grace = 5000\ncommand = "x"', "field 'drain.grace' must lie within 0-3600 seconds"),
        ('command = "x"', "field 'drain.grace' must be above 0 when a drain command is given"),
        ('grace = 5\nwhen = "now"', "drain"),
    ],
)
def test_a_malformed_drain_is_refused_with_its_field(table: str, sentence: str) -> None:
    with pytest.raises(BadInput, match=sentence):
        parse_profile(MINIMAL + "[drain]\n" + table + "\n", "p.toml")


def test_the_shipped_media_profiles_drain() -> None:
    for name in ("rtpengine", "sip"):
        drain = load_profile(name).drain
        assert drain.grace_s > 0
        assert "maxsessions 0" in drain.command
