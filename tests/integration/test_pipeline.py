"""The image pipeline on the real engine: flatten keeps everything, the XMS build runs its installer."""

from __future__ import annotations

import contextlib
import io
import secrets
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from docker_xms.domain.flatten import FIELDS
from tests.helpers import TEST_LABEL, run_cli, systemd_run_kwargs, wait_for

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
