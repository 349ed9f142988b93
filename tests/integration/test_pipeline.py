"""The image pipeline on the real engine: flatten keeps everything, the XMS build runs its installer."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

import docker_xms
from docker_xms.domain.flatten import FIELDS
from tests.helpers import TEST_LABEL, run_cli, systemd_run_kwargs, wait_for

pytestmark = pytest.mark.engine

PIPELINE = "pipeline"

# Every field flatten must keep is set, with values that need quoting; a file deleted in a later
# layer must stay deleted, and a service installed in a layer must run from the flat image.
SOURCE_DOCKERFILE = """\
FROM {base}
RUN printf '[Service]\\nExecStart=/bin/sleep infinity\\n[Install]\\nWantedBy=multi-user.target\\n' \\
      > /etc/systemd/system/flat-demo.service && systemctl enable flat-demo.service
RUN rm /etc/issue && mkdir -p "/srv/app dir" && echo kept > "/srv/app dir/file"
ENV GREETING="hello \\$USER" QUOTED="a \\"b\\""
LABEL "{test_label}"="{pipeline}" "odd"="back\\\\slash \\$x"
EXPOSE 80/tcp 5060/udp 5060/tcp
VOLUME ["/data", "/srv/volume"]
WORKDIR "/srv/app dir"
USER root
STOPSIGNAL SIGRTMIN+3
HEALTHCHECK --interval=7s --timeout=3s --start-period=2s --retries=4 CMD systemctl is-active --quiet flat-demo
ENTRYPOINT ["/sbin/init"]
CMD ["--log-level=info"]
"""


@pytest.fixture
def names(docker_client: Any) -> Iterator[tuple[str, str]]:
    token = secrets.token_hex(4)
    source, flat = f"docker-xms-test/pipeline-src:{token}", f"docker-xms-test/pipeline-flat:{token}"
    yield source, flat
    for ref in (flat, source):
        # The test may have failed before making it.
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref, force=True)


def _system_state(container: Any) -> str:
    _code, out = container.exec_run(["systemctl", "is-system-running"])
    return str(out.decode().strip())


@pytest.mark.engine
@pytest.mark.slow
def test_flatten_keeps_configuration_and_files(docker_client: Any, base_image: str, names: tuple[str, str]) -> None:
    source, flat = names
    dockerfile = SOURCE_DOCKERFILE.format(base=base_image, test_label=TEST_LABEL, pipeline=PIPELINE)
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=source, rm=True, forcerm=True)
    before = docker_client.api.inspect_image(source)
    assert len(before["RootFS"]["Layers"]) > 1
    assert all(before["Config"].get(field) for field in FIELDS), "the source must set every field"

    result = run_cli("flatten", source, flat, timeout=300)
    assert result.code == 0, result.err + result.out
    assert "1 layer)" in result.out
    assert f"{len(before['RootFS']['Layers'])} layers" in result.out

    after = docker_client.api.inspect_image(flat)
    assert len(after["RootFS"]["Layers"]) == 1
    for field in FIELDS:
        assert after["Config"].get(field) == before["Config"].get(field), field

    container = docker_client.containers.run(flat, **systemd_run_kwargs(PIPELINE))
    try:
        state = wait_for(
            lambda: _system_state(container) in ("running", "degraded") and _system_state(container),
            timeout=60,
            what="systemd to boot from the flat image",
        )
        assert state == "running"
        assert container.exec_run(["systemctl", "is-active", "flat-demo"]).output.decode().strip() == "active"
        assert container.exec_run(["cat", "file"]).output.decode().strip() == "kept"
        assert container.exec_run(["test", "-e", "/etc/issue"]).exit_code == 1
        assert container.exec_run(["sh", "-c", 'echo "$GREETING"']).output.decode().strip() == "hello $USER"
    finally:
        container.remove(force=True, v=True)


@pytest.mark.engine
def test_flatten_of_a_missing_image_says_so(docker_client: Any) -> None:
    result = run_cli("flatten", "docker-xms-test/no-such-image:0", "docker-xms-test/never:0")
    assert result.code == 2
    assert "There is no image docker-xms-test/no-such-image:0" in result.err


STANDIN = Path(__file__).resolve().parent.parent / "standin"


def make_standin_installer(folder: Path) -> Path:
    """A stand-in for dialogic_xms_<version>.tgz: one top directory holding an executable install script."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("the stand-in installer needs Debian's busybox-static")
    tarball = folder / "dialogic_xms_0.0.standin.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in ("xms_install.sh", "oam-reply"):
            tar.add(STANDIN / name, f"standin_xms_0.0/{name}")
        tar.add(busybox, "standin_xms_0.0/busybox")
    return tarball


@pytest.mark.engine
def test_xms_build_refuses_missing_files_before_contacting_the_engine(tmp_path: Path) -> None:
    # No engine is needed for this refusal: DOCKER_HOST points nowhere.
    env = {"DOCKER_HOST": "unix:///nonexistent.sock"}
    missing = run_cli("build", "-t", "docker-xms-test/never:0", "--installer", str(tmp_path / "no.tgz"), env=env)
    assert missing.code == 2
    assert f"Cannot read the installer {tmp_path / 'no.tgz'}" in missing.err
    installer = make_standin_installer(tmp_path)
    no_jre = run_cli("build", "--installer", str(installer), "--jre", str(tmp_path / "jre.rpm"), env=env)
    assert no_jre.code == 2
    assert "Cannot read the JRE" in no_jre.err
    (tmp_path / "not.tgz").write_text("not a tarball")
    bad = run_cli("build", "--installer", str(tmp_path / "not.tgz"), env=env)
    assert bad.code == 2
    assert "is not a readable tarball" in bad.err


@pytest.mark.engine
def test_dockerfile_only_prints_the_recipe(tmp_path: Path) -> None:
    installer = make_standin_installer(tmp_path)
    result = run_cli("build", "--installer", str(installer), "--dockerfile-only", "--media-ports", "10")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "FROM docker-xms/rocky9-systemd:latest"
    assert any(line.startswith("RUN dnf -y install") for line in lines)
    assert 'LABEL io.docker-xms.media-ports="49152-49161/udp"' in lines
    assert "EXPOSE 5060/udp" in lines
    assert not any("49152" in line for line in lines if line.startswith("EXPOSE"))


@pytest.mark.engine
@pytest.mark.slow
def test_xms_build_from_a_standin_installer_runs_ready(docker_client: Any, base_image: str, tmp_path: Path) -> None:
    token = secrets.token_hex(4)
    image, labelled, name = f"docker-xms-test/xms-standin:{token}", f"docker-xms-test/xms-standin:{token}-t", ""
    installer = make_standin_installer(tmp_path)
    try:
        started = time.monotonic()
        built = run_cli("build", "-t", image, "--installer", str(installer), "--base", base_image, timeout=600)
        build_seconds = time.monotonic() - started
        assert built.code == 0, built.err + built.out
        assert "The install script exited with status 3" in built.out
        assert "stand-in XMS installed" in built.out
        assert f"Built {image}" in built.out
        print(f"stand-in XMS build: {build_seconds:.1f} s")

        config = docker_client.api.inspect_image(image)["Config"]
        assert config["Labels"]["io.docker-xms.profile"] == "xms"
        assert config["Labels"]["io.docker-xms.media-ports"] == "49152-53152/udp,57344-57840/udp"
        assert "5060/udp" in config["ExposedPorts"]
        assert "22/tcp" in config["ExposedPorts"]
        assert not any(port.startswith("49152") for port in config["ExposedPorts"])
        assert config["StopSignal"] == "SIGRTMIN+3"

        # Containers from `run` carry the image's labels: this marks them as this test's.
        labelled_dockerfile = f'FROM {image}\nLABEL "{TEST_LABEL}"="{PIPELINE}"\n'
        docker_client.images.build(fileobj=io.BytesIO(labelled_dockerfile.encode()), tag=labelled, rm=True)
        probe = docker_client.containers.create(labelled, labels={TEST_LABEL: PIPELINE})
        try:
            with pytest.raises(docker.errors.NotFound):
                probe.get_archive("/usr/dialogic/cfg/mitconfig/ipms_rtp_addr_cfg.xml")
            assert probe.get_archive("/opt/standin-xms/oam-reply")
            with pytest.raises(docker.errors.NotFound):
                probe.get_archive("/opt/docker-xms-installer")
        finally:
            probe.remove(force=True)

        name = f"pipeline-xms-{token}"
        args = ["run", "--profile", "xms", "-i", labelled, "--name", name, "-c", "--ports", "publish"]
        started = time.monotonic()
        result = run_cli(*args, "--media-ports", "10", "--json", "--timeout", "120", timeout=240)
        print(f"stand-in XMS ready after {time.monotonic() - started:.1f} s")
        assert result.code == 0, result.err + result.out
        summary = json.loads(result.out)
        assert summary["ready"] is True
        assert summary["profile"] == "xms"
        assert "XMS services running" in summary["ready_state"]
    finally:
        if name:
            run_cli("rm", "-f", name, timeout=120)
            for container in docker_client.containers.list(all=True, filters={"name": name}):
                container.remove(force=True, v=True)
        for ref in (labelled, image):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(ref, force=True)


@pytest.mark.engine
@pytest.mark.slow
def test_an_installer_build_whose_profile_drains_stops_only_once_the_drain_ends(
    docker_client: Any, base_image: str, tmp_path: Path
) -> None:
    """A user's XMS-like profile with a [drain]: its image built from the installer gets the drain unit, so a
    plain `docker stop` waits while the drain command waits (here: while a file says a call is under way)."""
    token = secrets.token_hex(4)
    image, name = f"docker-xms-test/xms-drain:{token}", f"pipeline-drain-{token}"
    busy = "/run/docker-xms-test-busy"
    profile = tmp_path / "xms-drain.toml"
    xms = (Path(docker_xms.__file__).parent / "profiles" / "xms.toml").read_text()
    profile.write_text(
        xms.replace('name = "xms"', 'name = "xms-drain"')
        + '\n[drain]\ngrace = 30\nbefore = ["xmserver.service", "xms-oam.service"]\n'
        + f'command = "while [ -e {busy} ]; do sleep 0.2; done"\n'
    )
    installer = make_standin_installer(tmp_path)
    try:
        built = run_cli(
            "build", "--profile", str(profile), "-t", image, "--installer", str(installer), "--base", base_image,
            timeout=600,
        )  # fmt: skip
        assert built.code == 0, built.err + built.out
        # The image's own labels mark the container as this test's.
        labelled = f"{image}-t"
        dockerfile = f'FROM {image}\nLABEL "{TEST_LABEL}"="{PIPELINE}"\n'
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=labelled, rm=True)
        args = ["run", "--profile", str(profile), "-i", labelled, "--name", name, "-c", "--ports", "publish"]
        result = run_cli(*args, "--media-ports", "10", "--json", "--timeout", "120", "--no-agent", timeout=240)
        assert result.code == 0, result.err + result.out
        container = docker_client.containers.get(name)
        assert container.attrs["Config"]["StopTimeout"] == 30 + 10
        code, out = container.exec_run(["systemctl", "is-active", "docker-xms-drain.service"])
        assert code == 0, out

        code, out = container.exec_run(["touch", busy])
        assert code == 0, out
        stopper = threading.Thread(target=lambda: subprocess.run(["docker", "stop", name], capture_output=True))
        started = time.monotonic()
        stopper.start()

        def draining() -> bool:
            _, state = container.exec_run(["systemctl", "is-active", "docker-xms-drain.service"])
            return bool(state.decode().strip() == "deactivating")

        # The stop has reached systemd, whose drain unit now holds it while the call is under way.
        wait_for(draining, 30, 0.1, "the drain unit stopping")
        container.reload()
        assert container.status == "running", "the container stopped while its drain had a call under way"
        code, out = container.exec_run(["rm", "-f", busy])
        ended = time.monotonic()
        assert code == 0, out
        stopper.join(60)
        container.reload()
        took, after = time.monotonic() - started, time.monotonic() - ended
        print(f"\ndocker stop of the drained stand-in XMS: {took:.2f} s, {after:.2f} s after the call ended")
        assert container.status == "exited"
        assert after < 10
    finally:
        run_cli("rm", "-f", name, timeout=120)
        for ref in (f"{image}-t", image):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(ref, force=True)
