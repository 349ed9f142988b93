"""Push to a real registry (Debian's docker-registry) started by the test on a free localhost port."""

from __future__ import annotations

import contextlib
import io
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from docker_xms.adapters.engine import Engine
from tests.helpers import run_cli, wait_for

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs Debian's docker-registry package"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as response:
            return int(response.status) == 200
    except OSError:
        return False


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Starts registries on free ports; each is stopped when the test ends."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(readonly: bool = False) -> int:
        port = _free_port()
        root = tmp_path / f"registry-{port}"
        root.mkdir()
        maintenance = "  maintenance:\n    readonly:\n      enabled: true\n" if readonly else ""
        config = root / "config.yml"
        config.write_text(
            f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n{maintenance}"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        log = (root / "log").open("wb")
        procs.append(subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log))
        wait_for(lambda: _answers(port), timeout=20, what="the registry to answer")
        return port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def small_image(docker_client: Any) -> Iterator[Callable[[str], str]]:
    """Tags a tiny one-layer image, unique to the test, under the given names; all removed at the end."""
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as tar:
        content = secrets.token_hex(16).encode()
        info = tarfile.TarInfo("token")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    out = docker_client.api.import_image_from_data(payload.getvalue(), changes=['CMD ["/token"]'])
    image_id = next(part for part in str(out).split('"') if part.startswith("sha256:"))
    names: list[str] = []

    def tagged(name: str) -> str:
        repository, _, tag = name.rpartition(":")
        docker_client.api.tag(image_id, repository, tag)
        names.append(name)
        return image_id

    yield tagged
    for name in names:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(name, force=True)
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(image_id, force=True)


def test_push_then_pull_by_digest_gives_the_same_image(
    docker_client: Any, registry: Callable[..., int], small_image: Callable[[str], str]
) -> None:
    port = registry()
    repository = f"localhost:{port}/docker-xms-test/small"
    image_id = small_image(f"{repository}:1")

    result = run_cli("push", f"{repository}:1", timeout=120)
    assert result.code == 0, result.err + result.out
    summary = re.search(rf"Pushed {re.escape(repository)}:1 \(1 layer\): (sha256:[0-9a-f]{{64}})", result.out)
    assert summary, result.out
    digest = summary.group(1)

    docker_client.images.remove(f"{repository}:1", force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image_id)

    engine = Engine.connect()
    try:
        engine.pull(repository, digest)
        assert engine.inspect_image(f"{repository}@{digest}")["Id"] == image_id
    finally:
        engine.close()
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(f"{repository}@{digest}", force=True)


def test_push_where_no_registry_listens_says_so(small_image: Callable[[str], str]) -> None:
    name = f"localhost:{_free_port()}/docker-xms-test/small:1"
    small_image(name)
    result = run_cli("push", name, timeout=60)
    assert result.code == 1
    message = result.err.strip()
    assert message.startswith(f"error: Pushing {name} failed: no registry answered")
    assert "Traceback" not in result.err
    assert len(message.splitlines()) == 1


def test_push_refused_by_a_read_only_registry_says_so(
    registry: Callable[..., int], small_image: Callable[[str], str]
) -> None:
    name = f"localhost:{registry(readonly=True)}/docker-xms-test/small:1"
    small_image(name)
    result = run_cli("push", name, timeout=60)
    assert result.code == 1
    assert f"Pushing {name} failed: the registry" in result.err
    assert "does not take uploads" in result.err
    assert "Traceback" not in result.err
