"""The wake-up probe in real containers without a real-time budget: SCHED_FIFO is refused, SCHED_OTHER measures."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from docker_xms.adapters.engine import Engine
from docker_xms.usecases.probe import PROBE_EXIT_REFUSED, SchedulingRefused, build_probe, measure_wakeups
from tests.helpers import RTPENGINE_IMAGE, TEST_LABEL

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def engine(docker_client: Any) -> Iterator[Engine]:
    engine = Engine.connect()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def probe_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_probe(tmp_path_factory.mktemp("cache"))


def _run(docker_client: Any, image: str, cmd: list[str]) -> Any:
    # No cpu_rt_runtime: this container's cgroup gets the kernel's default real-time runtime of 0.
    return docker_client.containers.run(
        image, cmd, detach=True, cap_add=["SYS_NICE"], labels={TEST_LABEL: "media"}, network_mode="none"
    )


@pytest.fixture(scope="module")
def busybox(docker_client: Any, busybox_image: str) -> Iterator[str]:
    container = _run(docker_client, busybox_image, ["/bin/busybox", "sleep", "600"])
    yield container.id
    container.remove(force=True)


def test_probe_is_a_static_binary_cached_by_source(probe_binary: Path) -> None:
    head = probe_binary.read_bytes()[:4]
    assert head == b"\x7fELF"
    assert probe_binary.parent.name.startswith("probe-")
    mtime = probe_binary.stat().st_mtime_ns
    assert build_probe(probe_binary.parent.parent) == probe_binary
    assert probe_binary.stat().st_mtime_ns == mtime
    if shutil.which("ldd"):
        ldd = subprocess.run(["ldd", str(probe_binary)], capture_output=True, text=True, check=False)
        assert "not a dynamic executable" in (ldd.stdout + ldd.stderr)


def test_sched_fifo_is_refused_without_a_budget(engine: Engine, busybox: str, probe_binary: Path) -> None:
    engine.put_file(busybox, "/fifo-probe", probe_binary.read_bytes(), mode=0o755)
    code, out = engine.exec(busybox, ["/fifo-probe", "-p", "80", "-n", "10"])
    assert code == PROBE_EXIT_REFUSED
    assert "SCHED_FIFO priority 80 refused (EPERM)" in out
    # stdout and stderr reach us interleaved in no fixed order: find the summary line.
    summary = next(line for line in out.splitlines() if line.startswith("{"))
    assert json.loads(summary)["refused"] is True

    with pytest.raises(SchedulingRefused, match="refused SCHED_FIFO priority 80") as caught:
        measure_wakeups(engine, busybox, priority=80, duration_s=0.1, cache_dir=probe_binary.parent.parent)
    assert caught.value.tool == "probe"


def test_sched_other_measures_sane_percentiles(engine: Engine, busybox: str, probe_binary: Path) -> None:
    result = measure_wakeups(
        engine, busybox, priority=0, interval_us=1000, duration_s=2.0, cache_dir=probe_binary.parent.parent
    )
    print(result)
    assert result.tool == "probe"  # busybox has no cyclictest
    assert (result.policy, result.priority) == ("SCHED_OTHER", 0)
    assert result.samples == 2000
    assert 0 <= result.p50_us <= result.p99_us <= result.p999_us <= result.max_us
    # A wake-up a whole second late at the median would be a broken clock or loop, not a busy machine.
    assert result.p50_us < 1_000_000
    # -u removed the probe: nothing is left in the container.
    code, listing = engine.exec(busybox, ["/bin/busybox", "ls", "/"])
    assert code == 0
    assert "docker-xms-probe" not in listing


@pytest.fixture
def with_cyclictest(docker_client: Any, engine: Engine) -> Iterator[str]:
    """A Debian 12 container with the host's cyclictest copied in; the demo image shares its libc."""
    cyclictest = shutil.which("cyclictest")
    libnuma = Path("/lib/x86_64-linux-gnu/libnuma.so.1")
    if cyclictest is None or not libnuma.exists():
        pytest.skip("the host has no cyclictest: apt-get install rt-tests")
    try:
        docker_client.images.get(RTPENGINE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"no Debian 12 image {RTPENGINE_IMAGE} to run cyclictest in yet")
    container = _run(docker_client, RTPENGINE_IMAGE, ["sleep", "600"])
    try:
        engine.put_file(container.id, "/usr/local/bin/cyclictest", Path(cyclictest).read_bytes(), mode=0o755)
        engine.put_file(container.id, "/usr/local/lib/libnuma.so.1", libnuma.resolve().read_bytes())
        engine.exec(container.id, ["ldconfig"])
        yield container.id
    finally:
        container.remove(force=True)


def test_cyclictest_is_preferred_and_refused_too(engine: Engine, with_cyclictest: str, probe_binary: Path) -> None:
    with pytest.raises(SchedulingRefused) as caught:
        measure_wakeups(engine, with_cyclictest, priority=80, duration_s=0.2)
    assert caught.value.tool == "cyclictest"
    # cyclictest insists on SCHED_FIFO even at priority 0, so SCHED_OTHER falls back to the probe and says so.
    result = measure_wakeups(engine, with_cyclictest, priority=0, duration_s=1.0, cache_dir=probe_binary.parent.parent)
    assert (result.tool, result.policy, result.samples) == ("probe", "SCHED_OTHER", 1000)
    assert "cyclictest" in result.note
