"""Session fixtures: the real Docker engine, and test images built once per run and reused."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from docker_xms.adapters import hostlock
from tests import host_state
from tests.helpers import BASE_IMAGE, RTPENGINE_IMAGE, SUITE_LABEL, TEST_LABEL, run_cli

BUSYBOX_IMAGE = "docker-xms-test/busybox:latest"
# Held by the run that uses the host's engine, until its process ends.
RUN_LOCK = Path("/run/docker-xms/test-run.lock")

# Every docker-xms the suite starts, through run_cli or not, leaves no agent behind it; the tests of
# `run` starting one ask for it and stop it.
os.environ["DOCKER_XMS_START_AGENT"] = "0"
# Every container the suite's `docker-xms run`s create carries the suite's label as well.
os.environ["DOCKER_XMS_LABELS"] = f"{SUITE_LABEL}=1"


@pytest.fixture(scope="session")
def engine_client() -> Iterator[Any]:
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"integration tests need a running Docker engine: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def host_as_found(engine_client: Any) -> Iterator[None]:
    """The host's containers as the suite found them, and as it must leave them.

    The README's demo container is stopped for the run (it holds the 1:1 host ports) and started again
    with its budget at the end; every other container must then be exactly as it was.
    """
    client = engine_client
    # One run of the suite on a host at a time: a second one would take the first one's containers for those
    # an interrupted run left, and remove them under it.
    if hostlock.try_hold(RUN_LOCK) is None:
        pytest.fail(
            f"another run of this test suite (pid {hostlock.holder(RUN_LOCK)}) is using this host; run one at a time"
        )
    _remove_what_an_interrupted_run_left(client)
    before = host_state.snapshot(client)
    demo = next((cid for cid, f in before.items() if f.name == host_state.DEMO and f.status == "running"), None)
    if demo is not None:
        result = run_cli("stop", host_state.DEMO, timeout=120)
        assert result.code == 0, f"could not stop {host_state.DEMO} for the run: {result.err}"
        print(f"\n{host_state.DEMO} is stopped for the test run and started again at its end")
    yield
    for container in client.containers.list(all=True, filters={"label": TEST_LABEL}):
        container.remove(force=True)
    rebalance = run_cli("rt", "rebalance", timeout=120)
    problems = [] if rebalance.code == 0 else [f"rt rebalance after the run failed: {rebalance.err}"]
    if demo is not None:
        result = run_cli("start", host_state.DEMO, timeout=120)
        if result.code != 0:
            problems.append(f"could not start {host_state.DEMO} again: {result.err}")
    problems += host_state.differences(client, before, {demo} if demo else set())
    assert not problems, "the test run changed what it found on the host:\n" + "\n".join(problems)


def _remove_what_an_interrupted_run_left(client: Any) -> None:
    """A run that was cut short (killed, the machine stopped) leaves its containers: only the suite's own
    labels mark them, and they would hold names, ports and budgets this run needs."""
    left = {
        c.id: c
        for label in (TEST_LABEL, SUITE_LABEL)
        for c in client.containers.list(all=True, filters={"label": label})
    }
    if not left:
        return
    print(f"\nremoving {len(left)} containers an earlier, interrupted test run left:", *(c.name for c in left.values()))
    for container in left.values():
        container.remove(force=True)
    result = run_cli("rt", "rebalance", timeout=120)
    assert result.code == 0, f"rt rebalance after removing them failed: {result.err}"


@pytest.fixture(scope="session")
def docker_client(engine_client: Any, host_as_found: None) -> Iterator[Any]:
    yield engine_client
    for container in engine_client.containers.list(all=True, filters={"label": TEST_LABEL}):
        container.remove(force=True)


@pytest.fixture(scope="session")
def rtpengine_image(docker_client: Any) -> str:
    """The demo image, built through the CLI unless an image from the same recipe exists."""
    result = run_cli("build", "--profile", "rtpengine", "-t", RTPENGINE_IMAGE, "--if-missing", timeout=900)
    assert result.code == 0, result.err + result.out
    return RTPENGINE_IMAGE


@pytest.fixture(scope="session")
def sip_image(docker_client: Any) -> str:
    """The sip profile's image (Kamailio + rtpengine), built through the CLI unless one from the same recipe exists."""
    result = run_cli("build", "--profile", "sip", "--if-missing", timeout=900)
    assert result.code == 0, result.err + result.out
    return "docker-xms/sip:latest"


@pytest.fixture(scope="session")
def janus_image(docker_client: Any) -> str:
    """The janus profile's image (Janus and its demo pages), built through the CLI unless one from the same recipe exists."""
    result = run_cli("build", "--profile", "janus", "--if-missing", timeout=900)
    assert result.code == 0, result.err + result.out
    return "docker-xms/janus:latest"


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> str:
    """An image holding nothing but a static busybox, imported from the host's busybox-static package."""
    try:
        docker_client.images.get(BUSYBOX_IMAGE)
        return BUSYBOX_IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        pytest.fail("the host has no /bin/busybox: apt-get install busybox-static")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(busybox), arcname="bin/busybox")
    repository, tag = BUSYBOX_IMAGE.split(":")
    docker_client.api.import_image_from_data(buf.getvalue(), repository=repository, tag=tag)
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> str:
    """The offline Debian 12 systemd base, built through the CLI once per machine."""
    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        result = run_cli("build-base", "-t", BASE_IMAGE, "--offline", timeout=900)
        assert result.code == 0, result.err + result.out
        assert BASE_IMAGE in result.out.splitlines()[-1] or BASE_IMAGE in result.out
    return BASE_IMAGE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that restart the engine run last, so that they cannot cut another test's containers off."""
    items.sort(key=lambda item: item.get_closest_marker("engine_restart") is not None)
