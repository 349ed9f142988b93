"""The images everything runs on boot for real: systemd reaches `running`, rtpengine answers its ng ping."""

from __future__ import annotations

import contextlib
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest

from docker_xms.adapters.engine import Engine
from docker_xms.domain import recipes
from docker_xms.domain.names import parse_ref
from docker_xms.usecases import images
from tests.helpers import TEST_LABEL, run_cli, systemd_run_kwargs, wait_for

pytestmark = pytest.mark.engine


def _system_state(container: Any) -> str:
    _code, out = container.exec_run(["systemctl", "is-system-running"])
    return out.decode().strip()


def _boot(docker_client: Any, image: str, name: str) -> Any:
    container = docker_client.containers.run(image, **systemd_run_kwargs(name))
    try:
        state = wait_for(
            lambda: _system_state(container) in ("running", "degraded") and _system_state(container),
            timeout=60,
            what="systemd to finish booting",
        )
    except AssertionError:
        container.remove(force=True)
        raise
    if state == "degraded":
        _, failed = container.exec_run(["systemctl", "--failed", "--plain", "--no-legend"])
        container.remove(force=True)
        pytest.fail(f"systemd is degraded; failed units: {failed.decode().strip()}")
    return container


def test_offline_base_boots_systemd(docker_client: Any, base_image: str) -> None:
    attrs = docker_client.api.inspect_image(base_image)
    assert attrs["Config"]["StopSignal"] == "SIGRTMIN+3"
    assert attrs["Config"]["Cmd"] == ["/sbin/init"]
    assert "container=docker" in attrs["Config"]["Env"]
    container = _boot(docker_client, base_image, "images")
    try:
        _, comm = container.exec_run(["cat", "/proc/1/comm"])
        assert comm.decode().strip() == "systemd"
    finally:
        container.remove(force=True)


def test_demo_image_answers_ng_ping(docker_client: Any, rtpengine_image: str) -> None:
    container = _boot(docker_client, rtpengine_image, "images")
    try:
        script = (
            "exec 3<>/dev/udp/127.0.0.1/2223; printf 'c9 d7:command4:pinge' >&3; "
            "timeout 2 dd bs=4096 count=1 status=none <&3"
        )
        answer = wait_for(
            container.exec_run(["bash", "-c", script]).output.decode,
            timeout=30,
            what="rtpengine to answer",
        )
        assert answer.strip() == "c9 d6:result4:ponge"
        _, conf = container.exec_run(["cat", "/etc/rtpengine/rtpengine.conf"])
        assert "table = -1" in conf.decode()
        assert "scheduling = fifo" in conf.decode()
    finally:
        container.remove(force=True)


def test_build_refuses_malformed_tag_and_leaves_nothing(docker_client: Any) -> None:
    before = {tuple(i.tags) for i in docker_client.images.list()}
    result = run_cli("build-base", "-t", "Bad Tag!!", "--offline")
    assert result.code == 2
    assert "is not a valid image name" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert {tuple(i.tags) for i in docker_client.images.list()} == before


def test_build_refuses_unknown_distro() -> None:
    result = run_cli("build-base", "-t", "x/y:z", "--distro", "slackware")
    assert result.code == 2
    assert "slackware" in result.err


def test_build_without_mmdebstrap_says_what_to_install(docker_client: Any, tmp_path: Any) -> None:
    # A PATH with the essentials but no mmdebstrap.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    result = run_cli("build-base", "-t", "docker-xms-test/never:built", "--offline", env={"PATH": str(bindir)})
    assert result.code == 2
    assert "mmdebstrap is not installed" in result.err
    assert not docker_client.images.list(name="docker-xms-test/never")


def test_no_engine_is_one_sentence_and_exit_1() -> None:
    result = run_cli("build-base", "-t", "x/y:z", "--offline", env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.code == 1
    assert "No Docker engine answered" in result.err
    assert "Traceback" not in result.err


def test_a_rebuild_removes_the_image_it_replaced_unless_a_container_uses_it(docker_client: Any, tmp_path: Path) -> None:
    """Rebuilding a tag (the agent's image after an upgrade, a profile's after its recipe changed) leaves
    no untagged image behind; the one a container still uses is kept, as the engine wants."""
    ref = parse_ref("docker-xms-test/rebuilt:latest", allow_digest=False)
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add("/bin/busybox", arcname="bin/busybox")
    made: list[str] = []
    users: list[Any] = []

    def build(n: int) -> str:
        def dockerfile(image_id: str) -> str:
            return f"FROM {image_id}\nLABEL {recipes.LABEL_RECIPE}={n}\n"

        engine = Engine.connect()
        try:
            images._import_and_finish(engine, tarball, ref, dockerfile, images.Quiet())
        finally:
            engine.close()
        made.append(str(docker_client.images.get(str(ref)).id))
        return made[-1]

    def exists(image_id: str) -> bool:
        try:
            docker_client.images.get(image_id)
        except docker.errors.ImageNotFound:
            return False
        return True

    try:
        first = build(1)
        second = build(2)
        assert second != first
        assert not exists(first), "the image the rebuild replaced is still there"
        users.append(
            docker_client.containers.create(str(ref), ["/bin/busybox", "true"], labels={TEST_LABEL: "rebuilt"})
        )
        third = build(3)
        assert exists(second), "the image a container uses was removed"
        assert docker_client.images.get(str(ref)).id == third
    finally:
        for user in users:
            user.remove(force=True)
        for image_id in reversed(made):
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(image_id, force=True)
