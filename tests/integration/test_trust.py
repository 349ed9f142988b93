"""What a container carries cannot steer the host: labels, images, and the cgroup files inside.

Against the real engine, kernel and netfilter. Hostile containers are made here the way anyone could:
an image built `FROM` the demo image with docker-xms's labels, started with plain `docker run`; labels
copied from a managed container onto a new one; labels out of every range. Each is reconciled by
`docker-xms rt rebalance`, as the agent would.
"""

from __future__ import annotations

import io
import json
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    CGROUP_WRITE_ATTEMPT,
    TEST_LABEL,
    host_mountinfo,
    in_container,
    run_cli,
    wait_for,
    writable_cgroup_mounts,
)
from tests.integration.test_media_ports import run_json

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PREFIX = "trust-"
MANAGED = {"io.docker-xms.managed": "true", "io.docker-xms.profile": "rtpengine"}


def nat_rules() -> list[str]:
    out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "docker-xms:" in line]


def rules_of(container_id: str) -> list[str]:
    return [line for line in nat_rules() if f"docker-xms:{container_id[:12]}:" in line]


def dnat_spans(container_id: str) -> list[tuple[int, int]]:
    spans = []
    for line in rules_of(container_id):
        words = line.split()
        if "DNAT" in words and "--dport" in words:
            low, _, high = words[words.index("--dport") + 1].partition(":")
            spans.append((int(low), int(high or low)))
    return sorted(spans)


inside = in_container


def reconcile() -> dict[str, Any]:
    result = run_cli("rt", "rebalance", "--json")
    assert result.code == 0, result.err
    return dict(json.loads(result.out))


@pytest.fixture
def hostile(docker_client: Any) -> Iterator[Any]:
    """Start plain containers (not through docker-xms) with the labels given; all removed afterwards."""
    made: list[Any] = []
    images: list[str] = []

    def start(labels: dict[str, str], image: str = "docker-xms/rtpengine:latest", running: bool = True) -> Any:
        name = f"{PREFIX}{secrets.token_hex(3)}"
        kwargs: dict[str, Any] = {"labels": {**labels, TEST_LABEL: "trust"}, "name": name, "command": ["sleep", "600"]}
        container = (
            docker_client.containers.run(image, detach=True, **kwargs)
            if running
            else docker_client.containers.create(image, **kwargs)
        )
        made.append(container)
        container.reload()
        return container

    start.images = images  # type: ignore[attr-defined]
    yield start
    for container in made:
        container.remove(force=True)
    for image in images:
        docker_client.images.remove(image, force=True)
    reconcile()


def test_an_image_that_carries_docker_xms_labels_gets_no_rule_for_a_port_it_names(
    docker_client: Any, rtpengine_image: str, hostile: Any
) -> None:
    tag = f"docker-xms-test/hostile:{secrets.token_hex(3)}"
    dockerfile = (
        f"FROM {rtpengine_image}\n"
        "LABEL io.docker-xms.managed=true io.docker-xms.profile=rtpengine io.docker-xms.port-strategy=dnat "
        'io.docker-xms.advertise=container io.docker-xms.dnat="x/tcp:8222-8222>8222-8222,y/tcp:22-22>22-22"\n'
    )
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    hostile.images.append(tag)
    container = hostile({}, image=tag)
    assert container.labels["io.docker-xms.dnat"].startswith("x/tcp:8222")

    result = reconcile()

    assert rules_of(container.id) == []
    assert not [line for line in nat_rules() if "--dport 8222" in line or "--dport 22 " in line]
    skipped = {s["name"]: s["reason"] for s in result["skipped"]}
    assert "outside the media port pool" in skipped[container.name]


def test_labels_copied_from_a_managed_container_gain_nothing_of_its_rules(
    docker_client: Any, rtpengine_image: str, hostile: Any, names: list[str]
) -> None:
    name = f"{PREFIX}orig-{secrets.token_hex(3)}"
    names.append(name)
    original = run_json("-c", "--ports", "dnat", "--no-wait", "--name", name)
    labels = docker_client.containers.get(original["id"]).labels
    copy = hostile({k: v for k, v in labels.items() if k.startswith("io.docker-xms.")})

    reconcile()

    (media,) = original["media"]
    theirs = (media["host_start"], media["host_end"])
    assert dnat_spans(original["id"]) == [theirs]
    # Adopted like any container asking to be managed: a block of its own from the pool, never the original's.
    for low, high in dnat_spans(copy.id):
        assert high < theirs[0] or low > theirs[1]
    # Nor the original's advertised address: no SNAT rule for the copy.
    assert not [line for line in rules_of(copy.id) if "SNAT" in line]


def test_containers_with_labels_out_of_every_range_are_reported_and_the_others_go_on(
    docker_client: Any, rtpengine_image: str, hostile: Any, names: list[str]
) -> None:
    bad = [
        hostile({**MANAGED, "io.docker-xms.dnat": "x/udp:0-0>0-0"}),
        hostile({**MANAGED, "io.docker-xms.dnat": "x/udp:70000-70000>70000-70000"}),
        hostile({**MANAGED, "io.docker-xms.dnat": f"{'n' * 65}/udp:20000-20000>20000-20000"}),
        hostile({**MANAGED, "io.docker-xms.rt-weight": "1000000"}),
    ]
    # Created only, claiming every port: no range is held by a claim.
    hostile({**MANAGED, "io.docker-xms.host-media-ports": "1-65535"}, running=False)

    name = f"{PREFIX}good-{secrets.token_hex(3)}"
    names.append(name)
    good = run_json("-c", "--ports", "dnat", "--no-wait", "--name", name)
    assert dnat_spans(good["id"])

    status = run_cli("rt", "status", "--json")
    assert status.code == 0, status.err
    skipped = {s["name"] for s in json.loads(status.out)["skipped"]}
    assert {c.name for c in bad} <= skipped
    for c in bad:
        assert rules_of(c.id) == []
    removed = run_cli("rm", "-f", name)
    assert removed.code == 0, removed.err
    assert rules_of(good["id"]) == []


def test_a_port_a_host_process_listens_on_is_never_forwarded(rtpengine_image: str, names: list[str]) -> None:
    name = f"{PREFIX}listen-{secrets.token_hex(3)}"
    names.append(name)
    summary = run_json("-c", "--ports", "dnat", "--no-wait", "--name", name)
    (media,) = summary["media"]
    port = int(media["host_start"]) + 5
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("0.0.0.0", port))
        reconcile()
        spans = dnat_spans(summary["id"])
        assert not [s for s in spans if s[0] <= port <= s[1]], spans
        assert spans == [(media["host_start"], port - 1), (port + 1, media["host_end"])]
    reconcile()
    assert dnat_spans(summary["id"]) == [(media["host_start"], media["host_end"])]


def test_a_managed_container_can_write_no_cgroup_file_but_its_own_systemd_subtree(
    rtpengine_image: str, names: list[str]
) -> None:
    name = f"{PREFIX}cg-{secrets.token_hex(3)}"
    names.append(name)
    summary = run_json("-c", "--ports", "dnat", "--name", name)
    # systemd booted, and the media server's threads run SCHED_FIFO with the container's budget.
    assert summary["ready"] is True, summary["ready_state"]
    assert summary["rt_verified"] is True
    own = f"/docker/{summary['id']}"
    # As the container's own root sees it (docker exec: its capabilities, its cgroup), the attacker's view:
    # one writable cgroup mount, systemd's, at the root of its private cgroup namespace...
    assert writable_cgroup_mounts(inside(name, "cat", "/proc/self/mountinfo")) == [("/", "/sys/fs/cgroup/systemd")]
    # ... which is the container's own group, as the host sees the same mount: none above it.
    assert writable_cgroup_mounts(host_mountinfo(name)) == [(own, "/sys/fs/cgroup/systemd")]
    tried = inside(name, "sh", "-c", CGROUP_WRITE_ATTEMPT)
    # Nothing written; and no other container's group (nor the engine's parent) is even visible.
    assert tried.split() == ["0"], tried


def test_a_hostile_chrt_cannot_stall_the_agent(
    docker_client: Any, rtpengine_image: str, hostile: Any, names: list[str]
) -> None:
    """The agent checks SCHED_FIFO in every container it adopts (`chrt` inside it); an image's own `chrt` that
    never ends, printing a byte now and then, holds its one loop for a bounded time only.

    Beside the README's demo another agent runs, and either may adopt the container: the adoption is told by
    its plan in the adoption file, and the give-up by either agent's log."""
    from tests.helpers import agent_for_a_test
    from tests.integration.test_agent import AgentProcess

    tag = f"docker-xms-test/hostile-chrt:{secrets.token_hex(3)}"
    dockerfile = (
        f"FROM {rtpengine_image}\n"
        "RUN printf '#!/bin/sh\\nwhile true; do printf x; sleep 20; done\\n' > /usr/bin/chrt && chmod 755 /usr/bin/chrt\n"
    )
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    hostile.images.append(tag)
    plans = Path("/run/docker-xms/adopted.json")
    demo_log = Path("/var/log/docker-xms-agent.log")
    demo_log_before = demo_log.read_text(errors="replace") if demo_log.exists() else ""
    with agent_for_a_test(AgentProcess()) as agent:
        name = f"{PREFIX}victim-{secrets.token_hex(3)}"
        names.append(name)
        victim = run_json("-c", "--ports", "dnat", "--no-wait", "--media-ports", "10", "--name", name)
        wait_for(lambda: bool(dnat_spans(victim["id"])), 10, what="the victim's rules")
        stalling = hostile(MANAGED, image=tag)
        wait_for(lambda: plans.exists() and stalling.id in plans.read_text(), 20, what="the hostile container adopted")
        # Removed by hand while an agent runs the hostile chrt: its rules must still go promptly.
        began = time.monotonic()
        docker_client.containers.get(victim["id"]).remove(force=True)
        wait_for(lambda: not rules_of(victim["id"]), 5, interval=0.05, what="the removed container's rules gone")
        took = time.monotonic() - began

        def gave_up() -> bool:
            demo = demo_log.read_text(errors="replace") if demo_log.exists() else ""
            return "stopped being read" in agent.log() + demo[len(demo_log_before) :]

        wait_for(gave_up, 10, what="an agent to give up on the hostile chrt")
        print(f"\nrules of a container removed by hand gone {took:.2f} s later, beside a hostile chrt")
