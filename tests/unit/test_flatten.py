from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docker_xms.domain import flatten
from docker_xms.errors import BadInput

FULL = {
    "Env": ["PATH=/usr/bin:/bin", "GREETING=hello $USER"],
    "Labels": {"io.docker-xms.profile": "xms", 'odd "key"': "back\\slash"},
    "ExposedPorts": {"5060/udp": {}, "80/tcp": {}},
    "Volumes": {"/var/lib/xms": {}},
    "WorkingDir": "/opt/app dir",
    "User": "xms:xms",
    "StopSignal": "SIGRTMIN+3",
    "Healthcheck": {
        "Test": ["CMD-SHELL", "systemctl is-system-running"],
        "Interval": 30_000_000_000,
        "Timeout": 1_500_000_000,
        "StartPeriod": 0,
        "Retries": 3,
    },
    "Entrypoint": ["/sbin/init"],
    "Cmd": ["--log-level=info"],
}


def _lines(config: Mapping[str, object]) -> list[str]:
    return [c.line for c in flatten.changes_for(config)]


def test_every_field_becomes_an_instruction() -> None:
    lines = _lines(FULL)
    assert lines == [
        'ENV PATH="/usr/bin:/bin"',
        'ENV GREETING="hello \\$USER"',
        'LABEL "io.docker-xms.profile"="xms"',
        'LABEL "odd \\"key\\""="back\\\\slash"',
        "EXPOSE 5060/udp 80/tcp",
        'VOLUME ["/var/lib/xms"]',
        'WORKDIR "/opt/app dir"',
        'USER "xms:xms"',
        'STOPSIGNAL "SIGRTMIN+3"',
        "HEALTHCHECK --interval=30s --timeout=1500ms --retries=3 CMD systemctl is-system-running",
        'ENTRYPOINT ["/sbin/init"]',
        'CMD ["--log-level=info"]',
    ]
    keywords = {c.keyword for c in flatten.changes_for(FULL)}
    assert keywords == {"ENV", "LABEL", "EXPOSE", "VOLUME", "WORKDIR", "USER", "STOPSIGNAL", "HEALTHCHECK"} | {
        "ENTRYPOINT",
        "CMD",
    }


def test_an_empty_configuration_needs_no_instruction() -> None:
    assert _lines({"Env": None, "Cmd": None, "Labels": None, "Healthcheck": None}) == []


def test_entrypoint_comes_before_cmd_so_cmd_survives() -> None:
    lines = _lines({"Cmd": ["a"], "Entrypoint": ["b"]})
    assert lines.index('ENTRYPOINT ["b"]') < lines.index('CMD ["a"]')


def test_healthcheck_forms() -> None:
    assert flatten.healthcheck_line({"Test": ["NONE"]}) == "HEALTHCHECK NONE"
    assert flatten.healthcheck_line({"Test": ["CMD", "curl", "-f", "x"]}) == 'HEALTHCHECK CMD ["curl", "-f", "x"]'
    with pytest.raises(BadInput):
        flatten.healthcheck_line({"Test": ["CMD-SHELL", "a\nb"]})
    with pytest.raises(BadInput):
        flatten.healthcheck_line({"Interval": 10})


def test_durations_use_the_largest_exact_unit() -> None:
    assert flatten.duration(30_000_000_000) == "30s"
    assert flatten.duration(90 * 10**9) == "90s"
    assert flatten.duration(120 * 10**9) == "2m"
    assert flatten.duration(1_500_000) == "1500us"
    assert flatten.duration(7) == "7ns"


def test_refused_instructions_go_to_the_dockerfile_in_order() -> None:
    changes = flatten.changes_for(FULL)
    now, later = flatten.split_changes(changes, {"stopsignal"})
    assert [c.keyword for c in later] == ["STOPSIGNAL"]
    assert len(now) == len(changes) - 1
    _, later = flatten.split_changes(changes, {"ENTRYPOINT"})
    assert [c.keyword for c in later] == ["ENTRYPOINT", "CMD"]
    text = flatten.metadata_dockerfile("sha256:abc", later)
    assert text.splitlines() == ["FROM sha256:abc", 'ENTRYPOINT ["/sbin/init"]', 'CMD ["--log-level=info"]']


def test_refusal_messages_name_the_instruction() -> None:
    assert flatten.refused_keyword("stopsignal is not a valid change command") == "STOPSIGNAL"
    assert flatten.refused_keyword("Error response: healthcheck is not a valid change command") == "HEALTHCHECK"
    assert flatten.refused_keyword("something else") is None


def test_values_that_a_line_cannot_carry_are_refused() -> None:
    with pytest.raises(BadInput):
        flatten.changes_for({"Labels": {"a": "two\nlines"}})
    with pytest.raises(BadInput):
        flatten.changes_for({"Env": ["NOVALUE"]})


def _unquote(word: str) -> str:
    """The engine's reading of a double-quoted word: only \\\\, \\" and \\$ are escapes."""
    assert word.startswith('"')
    assert word.endswith('"')
    out, i, body = [], 0, word[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in '\\"$':
            out.append(body[i + 1])
            i += 2
        else:
            assert body[i] not in '"$', body
            out.append(body[i])
            i += 1
    return "".join(out)


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n")))
def test_quoting_reads_back_as_the_same_value(value: str) -> None:
    assert _unquote(flatten.quote(value)) == value


@given(st.lists(st.text()))
def test_exec_form_is_a_json_array(args: list[str]) -> None:
    assert json.loads(flatten.exec_form(args)) == args


def test_differences_ignore_null_versus_empty() -> None:
    assert flatten.config_differences({"Env": None, "Volumes": {}}, {"Env": [], "Volumes": None}) == []
    assert flatten.config_differences({"User": "a"}, {"User": "b"}) == ["User"]
    assert flatten.config_differences(FULL, dict(FULL, StopSignal=None)) == ["StopSignal"]
