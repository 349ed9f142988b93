"""The container lifecycle as a user drives it: run, ps, shell, stop, rm, and bad inputs leaving nothing."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    SUITE_LABEL,
    TEST_LABEL,
    cli_path,
    managed_names,
    ng_ping,
    parent_runtime,
    run_cli,
    runtime_of,
)
from tests.host_state import fair_shares, foreign_runtime, kernel_pool, one_to_one_holder

pytestmark = pytest.mark.engine

PREFIX = "lc-"


def _rules() -> str:
    out = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines() if "docker-xms:" in line)


def _budgets() -> dict[str, str]:
    root = Path("/sys/fs/cgroup/cpu/docker")
    return {
        p.name: (p / "cpu.rt_runtime_us").read_text() for p in root.iterdir() if (p / "cpu.rt_runtime_us").is_file()
    }


@pytest.fixture
def clean(docker_client: Any) -> Iterator[None]:
    yield
    for c in docker_client.containers.list(all=True):
        if c.name.startswith(PREFIX):
            c.remove(force=True)
    run_cli("rt", "rebalance")


def test_one_to_one_start_is_ready_and_its_summary_is_true(
    docker_client: Any, rtpengine_image: str, clean: None
) -> None:
    holder = one_to_one_holder(docker_client)
    if holder is not None:
        pytest.skip(f"{holder}, which these tests did not start, holds this host's 1:1 ports")
    result = run_cli("run", "--name", f"{PREFIX}one", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["ready"] is True
    assert summary["mode"] == "one-to-one"
    assert summary["rt_verified"] is True
    assert summary["budget_us"] == runtime_of(summary["id"])
    ng = next(p for p in summary["ports"] if p["name"] == "ng")
    assert ng["host"] == ng["container"] == "2223"
    # The printed ports answer: on the host's port and at the container's address.
    assert ng_ping("127.0.0.1", int(ng["host"])).endswith(b"d6:result4:ponge")
    assert ng_ping(summary["address"], int(ng["container"])).endswith(b"d6:result4:ponge")
    media = next(p for p in summary["ports"] if p["role"] == "media")
    assert media["host"] == media["container"] == "30000-30999"

    # A second 1:1 container is refused and leaves nothing behind.
    names, budgets, rules = managed_names(docker_client), _budgets(), _rules()
    second = run_cli("run", "--name", f"{PREFIX}two", "--json")
    assert second.code == 2
    assert "already runs with 1:1 host ports" in second.err
    assert len(second.err.strip().splitlines()) == 1
    assert managed_names(docker_client) == names
    assert _budgets() == budgets
    assert _rules() == rules

    # ps shows it, and a shell in its namespaces sees systemd as PID 1.
    listed = json.loads(run_cli("ps", "--json").out)
    row = next(r for r in listed if r["name"] == f"{PREFIX}one")
    assert row["mode"] == "one-to-one"
    assert row["budget_us"] == summary["budget_us"]
    shell = subprocess.run(
        [cli_path(), "shell", f"{PREFIX}one", "--", "cat", "/proc/1/comm"], capture_output=True, text=True, timeout=30
    )
    assert shell.stdout.strip() == "systemd", shell.stderr

    assert run_cli("rm", "-f", f"{PREFIX}one").code == 0
    assert f"{PREFIX}one" not in managed_names(docker_client)
    assert summary["id"][:12] not in _rules()


def test_three_container_address_servers_share_and_give_back(
    docker_client: Any, rtpengine_image: str, clean: None
) -> None:
    started = []
    for i in range(3):
        result = run_cli("run", "-c", "--name", f"{PREFIX}c{i}", "--json", "--label", f"position={i}")
        assert result.code == 0, result.err
        started.append(json.loads(result.out))
    # The user's own labels (the suite's, from the labels setting, and --label's) are on each container.
    for i, s in enumerate(started):
        labels = docker_client.containers.get(s["id"]).labels
        assert (labels["position"], labels[SUITE_LABEL]) == (str(i), "1")
    shares = fair_shares(docker_client)
    others = len(shares) - 3
    for s in started:
        assert runtime_of(s["id"]) == shares[s["id"]]
        if not others:
            assert shares[s["id"]] == kernel_pool(docker_client) // 3
        assert ng_ping(s["address"], 2223).endswith(b"d6:result4:ponge")
    hosts = [next(p["host"] for p in s["ports"] if p["role"] == "media") for s in started]
    assert len(set(hosts)) == 3, hosts

    assert run_cli("stop", f"{PREFIX}c0").code == 0
    shares = fair_shares(docker_client)
    assert [runtime_of(s["id"]) for s in started[1:]] == [shares[s["id"]] for s in started[1:]]
    if not others:
        assert shares[started[1]["id"]] == kernel_pool(docker_client) // 2
    assert parent_runtime() == kernel_pool(docker_client) + foreign_runtime(docker_client)

    assert run_cli("rm", "-f", f"{PREFIX}c0", f"{PREFIX}c1", f"{PREFIX}c2").code == 0
    assert not {f"{PREFIX}c{i}" for i in range(3)} & managed_names(docker_client)
    assert not any(s["id"][:12] in _rules() for s in started)


def _refused(docker_client: Any, *args: str, code: int = 2, env: dict[str, str] | None = None) -> str:
    names, budgets, rules = managed_names(docker_client), _budgets(), _rules()
    result = run_cli(*args, env=env)
    assert result.code == code, (result.code, result.err, result.out)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    assert managed_names(docker_client) == names
    assert _budgets() == budgets
    assert _rules() == rules
    return lines[0]


def test_unknown_image(docker_client: Any, clean: None) -> None:
    err = _refused(docker_client, "run", "-c", "-i", "docker-xms-test/no-such-image:1", "--name", f"{PREFIX}x")
    assert "docker-xms-test/no-such-image:1" in err


@pytest.fixture(scope="module")
def image_without_systemd(docker_client: Any, tmp_path_factory: Any) -> str:
    tag = "docker-xms-test/no-systemd:1"
    try:
        docker_client.images.get(tag)
    except Exception:
        folder = tmp_path_factory.mktemp("nosystemd")
        (folder / "Dockerfile").write_text('FROM scratch\nCOPY hello /hello\nCMD ["/hello"]\n')
        (folder / "hello").write_text("not a program\n")
        docker_client.images.build(path=str(folder), tag=tag, rm=True)
    return tag


def test_image_without_systemd(docker_client: Any, image_without_systemd: str, clean: None) -> None:
    err = _refused(docker_client, "run", "-c", "-i", image_without_systemd, "--name", f"{PREFIX}nosd")
    assert "has no systemd" in err
    assert not docker_client.containers.list(all=True, filters={"name": f"{PREFIX}nosd"})


def test_a_label_in_docker_xms_namespace(docker_client: Any) -> None:
    line = _refused(
        docker_client, "run", "-c", "--name", f"{PREFIX}l", "--label", "io.docker-xms.dnat=x/tcp:22-22>22-22"
    )
    assert (
        line
        == "error: Label 'io.docker-xms.dnat' is in docker-xms's own namespace (io.docker-xms.); choose another key."
    )


def test_unknown_profile(docker_client: Any) -> None:
    assert "no profile named 'nope'" in _refused(docker_client, "run", "-c", "--profile", "nope")


def test_malformed_profile(docker_client: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[profile]\nname = "bad"\n\n[[ports]]\nprotocol = "udp"\nport = 99999\n')
    err = _refused(docker_client, "run", "-c", "--profile", str(bad))
    assert str(bad) in err
    assert "line 6" in err
    assert "'ports[0].port'" in err


def test_unknown_container(docker_client: Any) -> None:
    for command in (("stop", "lc-nothing"), ("rm", "-f", "lc-nothing"), ("rt", "verify", "lc-nothing")):
        assert "lc-nothing" in _refused(docker_client, *command)


def test_duplicate_name(docker_client: Any, rtpengine_image: str, clean: None) -> None:
    docker_client.containers.create(rtpengine_image, name=f"{PREFIX}dup", labels={TEST_LABEL: "lifecycle"})
    assert "already exists" in _refused(docker_client, "run", "-c", "--name", f"{PREFIX}dup")


def test_host_port_taken(docker_client: Any, rtpengine_image: str, clean: None) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("0.0.0.0", 2223))
        err = _refused(docker_client, "run", "--name", f"{PREFIX}taken")
    assert "2223/udp is already in use" in err


def test_no_engine(docker_client: Any) -> None:
    err = _refused(docker_client, "run", "-c", code=1, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert "No Docker engine answered" in err


def test_route_names_the_bridge_and_this_host() -> None:
    result = run_cli("route", "--json")
    assert result.code == 0, result.err
    advice = json.loads(result.out)
    assert (advice["destination"], advice["mask"], advice["metric"]) == ("172.17.0.0", "255.255.0.0", 10)
    assert advice["gateway"]
