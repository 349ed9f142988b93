"""WebRTC echo calls through the janus profile from a real browser: headless Chromium with fake camera and
microphone, driven by `docker-xms test-call` run inside a network namespace as a remote machine would be.

With `--advertise host` the namespace reaches only the host's own address (the container network is unreachable
from it, see tests.integration.test_outside): the page, the API and every media packet go through the host's
published ports and DNAT forwards, and Janus's ICE candidates carry the advertised address. With `--advertise
container` the namespace has a route to the container network and calls Janus at the container's own address.
What is checked is what the browser itself reports (getStats): DTLS connected, echoed audio and video received.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lab.peer_links import LinkPeer, Outside

from docker_xms.adapters import hostnet
from tests.helpers import cli_path
from tests.integration.test_media_ports import port_row, run_json
from tests.integration.test_outside import _name

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SECONDS = 10


def browser_call(peer: LinkPeer, name: str, screenshot: Path) -> dict[str, Any]:
    """`docker-xms test-call NAME` inside the peer's namespace (the engine's socket is a file: it still answers)."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.fail("Chromium is not installed: apt-get install chromium chromium-driver")
    done = subprocess.run(
        [
            "ip", "netns", "exec", peer.netns, cli_path(), "test-call", name,
            "--seconds", str(SECONDS), "--screenshot", str(screenshot), "--json",
        ],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr
    result = dict(json.loads(done.stdout))
    print(f"\n{name}: exit {done.returncode}, {json.dumps(result)}")
    assert done.returncode == 0, done.stderr
    return result


def assert_media_flowed(result: dict[str, Any], advertised: str, screenshot: Path, prflx_allowed: bool = False) -> None:
    assert result["client"] == "janus-echo"
    assert result["answered"] is True, result["failed_reason"]
    by_kind = {d["name"]: d for d in result["directions"]}
    assert set(by_kind) == {"audio echoed", "video echoed"}
    for d in by_kind.values():
        # 10 s of 20 ms audio frames is 500 packets; video is at least a few packets a second.
        assert d["received"] >= 0.9 * d["sent"] > 0, d
        assert d["bytes_received"] > 0, d
    assert by_kind["audio echoed"]["received"] >= 0.9 * SECONDS * 50
    # The browser's media went to the address Janus advertised. At the container's own address, Docker
    # masquerades Janus's own connectivity checks towards the browser as from the host's address, and the browser
    # may pick the pair it learnt from them: peer-reflexive, whose address Chromium leaves out of its statistics.
    remote = result["remote_candidate"]
    assert remote.startswith(f"{advertised}:") or (prflx_allowed and remote.endswith("(prflx)")), remote
    assert result["rtt_ms"] is not None
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", ["1:1", "-c"])
def test_an_echo_call_from_a_browser_that_reaches_only_the_host(
    janus_image: str, outside: Outside, names: list[str], tmp_path: Path, mode: str
) -> None:
    peer = outside.add("a")
    name = _name("janus")
    names.append(name)
    args = ("-c",) if mode == "-c" else ()
    summary = run_json(
        *args, "--profile", "janus", "--advertise", "host", "--name", name, wait_one_to_one=180 if not args else 0
    )
    assert summary["ready"] is True, summary["ready_state"]
    advertised = hostnet.host_address()
    assert (summary["advertise"], summary["advertise_choice"]) == (advertised, "host")
    web = int(port_row(summary, "web")["host"])
    if not args:
        assert web == 8000
    # The URL a person opens in their own browser.
    assert f"http://{advertised}:{web}/docker-xms-echo.html" in summary["summary"]
    shot = tmp_path / "call.png"
    result = browser_call(peer, name, shot)
    assert result["server"] == f"http://{advertised}:{web}/docker-xms-echo.html"
    assert_media_flowed(result, advertised, shot)


def test_an_echo_call_at_the_container_address(
    janus_image: str, outside: Outside, names: list[str], tmp_path: Path
) -> None:
    peer = outside.add("a")
    # This peer routes to the container network through the host.
    peer.run("ip", "route", "del", "unreachable", outside.container_subnet)
    name = _name("janus-c")
    names.append(name)
    summary = run_json("-c", "--profile", "janus", "--advertise", "container", "--name", name)
    assert summary["ready"] is True, summary["ready_state"]
    address = summary["address"]
    assert summary["advertise"] == address
    shot = tmp_path / "call.png"
    result = browser_call(peer, name, shot)
    assert result["server"] == f"http://{address}:8000/docker-xms-echo.html"
    assert_media_flowed(result, address, shot, prflx_allowed=True)
