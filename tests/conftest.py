"""Session fixtures: the real Docker engine, and test images built once per run and reused."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.helpers import BASE_IMAGE, RTPENGINE_IMAGE, TEST_LABEL, run_cli

BUSYBOX_IMAGE = "docker-xms-test/busybox:latest"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"integration tests need a running Docker engine: {exc}")
    yield client
    for container in client.containers.list(all=True, filters={"label": TEST_LABEL}):
        container.remove(force=True)
    client.close()


@pytest.fixture(scope="session")
def rtpengine_image(docker_client: Any) -> str:
    """The demo image, built through the CLI unless an image from the same recipe exists."""
    result = run_cli("build", "--profile", "rtpengine", "-t", RTPENGINE_IMAGE, "--if-missing", timeout=900)
    assert result.code == 0, result.err + result.out
    return RTPENGINE_IMAGE


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
