"""`docker-xms test-call` against the real demo and sip images in -c mode, as a user runs it: a call that works,
and one whose media server was stopped underneath it."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import run_cli

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def started(profile: str) -> Iterator[str]:
    name = f"test-call-{profile}-{secrets.token_hex(3)}"
    result = run_cli("run", "-c", "--profile", profile, "--name", name, "--json", timeout=300)
    assert result.code == 0, result.err
    try:
        yield name
    finally:
        run_cli("rm", "-f", name)


@pytest.fixture
def rtpengine_container(rtpengine_image: str) -> Iterator[str]:
    yield from started("rtpengine")


@pytest.fixture
def sip_container(sip_image: str) -> Iterator[str]:
    if shutil.which("sipp") is None:
        pytest.fail("SIPp is not installed: apt-get install sip-tester")
    yield from started("sip")


def stop_rtpengine(name: str) -> None:
    subprocess.run(["docker", "exec", name, "systemctl", "stop", "rtpengine-daemon"], check=True, timeout=60)


def test_rtpengine_test_call_sends_packets_both_ways(rtpengine_container: str) -> None:
    result = run_cli("test-call", rtpengine_container, "--seconds", "2", "--json", timeout=60)
    assert result.code == 0, result.err
    call = json.loads(result.out)
    print(f"\nrtpengine test call: {call['directions']}")
    assert call["answered"] is True
    assert call["ok"] is True
    assert [(d["sent"], d["received"]) for d in call["directions"]] == [(100, 100), (100, 100)]
    assert all(d["jitter_ms"] is not None and d["jitter_ms"] < 20 for d in call["directions"])

    human = run_cli("test-call", rtpengine_container, "--seconds", "1", timeout=60)
    assert human.code == 0, human.err
    assert "a -> b: sent 50, received 50" in human.out


def test_rtpengine_test_call_fails_in_one_sentence_when_rtpengine_is_stopped(rtpengine_container: str) -> None:
    stop_rtpengine(rtpengine_container)
    result = run_cli("test-call", rtpengine_container, "--seconds", "1", timeout=60)
    assert result.code == 1
    assert result.err.strip().startswith("error: rtpengine did not answer the ng offer")
    assert len(result.err.strip().splitlines()) == 1


def test_sip_test_call_is_answered_and_echoed(sip_container: str) -> None:
    result = run_cli("test-call", sip_container, "--json", timeout=90)
    assert result.code == 0, result.err
    call = json.loads(result.out)
    print(f"\nsip test call: setup {call['setup_ms']} ms, {call['directions']}")
    assert call["answered"] is True
    assert call["ok"] is True
    (forward, echo) = call["directions"]
    assert forward["sent"] > 200
    assert forward["received"] == forward["sent"]
    assert echo["sent"] == forward["received"]
    assert echo["received"] == echo["sent"]


def test_sip_test_call_fails_when_rtpengine_is_stopped(sip_container: str) -> None:
    stop_rtpengine(sip_container)
    result = run_cli("test-call", sip_container, timeout=90)
    assert result.code == 1, result.out + result.err
    assert result.err.strip().startswith("error: ")
    assert len(result.err.strip().splitlines()) == 1
    print(f"\n{result.out}{result.err}")


def test_test_call_refuses_an_unknown_container(docker_client: Any) -> None:
    result = run_cli("test-call", f"no-such-{secrets.token_hex(3)}")
    assert result.code == 2
    assert result.err.strip().startswith("error: There is no container")
