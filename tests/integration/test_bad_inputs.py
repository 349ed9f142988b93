"""Bad input through the installed command line: one sentence, exit 2, and nothing left behind.

"Nothing left behind" is checked against the host itself: the engine's containers, every budget in the
engine's parent cgroup, and docker-xms's netfilter rules are the same before and after. Containers whose
labels docker-xms cannot read are made by hand here, as an administrator (or an older version) would.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PARENT, TEST_LABEL, Result, cli_path, run_cli, runtime_of

pytestmark = pytest.mark.engine

PREFIX = "bad-"
PROFILE = Path(__file__).parents[2] / "src/docker_xms/profiles/rtpengine.toml"
# A registry nobody listens on: a pull fails at once, without leaving this machine.
MISSING_IMAGE = "127.0.0.1:1/docker-xms-test/missing:1"
ROOT_SENTENCE = "error: docker-xms must run as root: it writes real-time budgets into the host's cgroups."


def _rules() -> list[str]:
    out = []
    for table in ("nat", "filter"):
        listing = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=True).stdout
        out += [f"{table} {line}" for line in listing.splitlines() if "DOCKER-XMS" in line]
    return out


def _budgets() -> dict[str, str]:
    return {
        entry.name: (entry / "cpu.rt_runtime_us").read_text().strip()
        for entry in [PARENT, *PARENT.iterdir()]
        if (entry / "cpu.rt_runtime_us").is_file()
    }


def _host(client: Any) -> tuple[Any, ...]:
    containers = sorted((c.id, c.status) for c in client.containers.list(all=True))
    return containers, _budgets(), _rules()


@pytest.fixture
def unchanged(docker_client: Any) -> Iterator[None]:
    """The host is exactly as it was when the test ends."""
    before = _host(docker_client)
    yield
    assert _host(docker_client) == before


@pytest.fixture
def cleanup(docker_client: Any) -> Iterator[None]:
    yield
    for c in docker_client.containers.list(all=True):
        if c.name.startswith(PREFIX):
            c.remove(force=True)
    run_cli("rt", "rebalance")


def _refused(result: Result, sentence: str) -> None:
    assert result.code == 2, result.err + result.out
    assert result.err.strip() == sentence, result.err


def _usage_error(result: Result, sentence: str) -> None:
    assert result.code == 2, result.err + result.out
    assert result.err.strip().splitlines()[-1] == sentence, result.err


@pytest.mark.parametrize("weight", ["0", "-1"])
def test_run_refuses_a_weight_below_1(docker_client: Any, unchanged: None, weight: str) -> None:
    result = run_cli("run", "-c", "--no-wait", "--name", f"{PREFIX}w", "--rt-weight", weight)
    _usage_error(result, f"Error: Invalid value for '--rt-weight': {weight} is not in the range 1<=x<=100.")


def test_run_refuses_a_name_with_a_slash(docker_client: Any, unchanged: None) -> None:
    result = run_cli("run", "-c", "--no-wait", "--name", f"{PREFIX}a/b")
    _refused(result, f"error: '{PREFIX}a/b' is not a valid container name: use letters, digits, '_', '.' or '-'.")


def test_run_refuses_more_media_ports_than_the_profile_has(docker_client: Any, unchanged: None) -> None:
    result = run_cli("run", "-c", "--no-wait", "--name", f"{PREFIX}m", "--media-ports", "1001")
    _refused(result, "error: --media-ports 1001 is more than the profile's 1000 media ports.")


def test_run_refuses_a_profile_whose_host_port_range_passes_65535(
    docker_client: Any, unchanged: None, tmp_path: Path
) -> None:
    text = PROFILE.read_text().replace('port = 2223\nrole = "control"', 'range = "2223-2232"\nhost_port = 65530')
    path = tmp_path / "high.toml"
    path.write_text(text)
    line = text.splitlines().index("host_port = 65530") + 1
    result = run_cli("run", "-c", "--no-wait", "--name", f"{PREFIX}h", "--profile", str(path))
    _refused(
        result,
        f"error: Profile {path}: line {line}, field 'ports[0].host_port' leaves no room for the 10 ports of the "
        "range below 65536.",
    )


def test_run_refuses_a_missing_image_with_host_networking(docker_client: Any, unchanged: None, tmp_path: Path) -> None:
    # Ports of its own, so that the refusal is about the image whatever else runs on this host.
    text = PROFILE.read_text().replace("port = 2223", "port = 41223").replace("30000-30999", "41000-41009")
    path = tmp_path / "own.toml"
    path.write_text(text)
    result = run_cli(
        "run", "-c", "--no-wait", "--ports", "host", "--name", f"{PREFIX}i", "--profile", str(path), "-i", MISSING_IMAGE
    )
    assert result.code == 2, result.err + result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"error: Image {MISSING_IMAGE} is not on this engine and could not be pulled: "), lines
    assert lines[0].endswith("connection refused (build it with `docker-xms build --profile rtpengine`)."), lines


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    # CAP_DAC_READ_SEARCH only lets an interpreter kept under /root (pyenv) be found and read; the user
    # still cannot write a cgroup file, the lock or the engine's socket.
    return subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
            cli_path(),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "NO_COLOR": "1", "COLUMNS": "200"},
    )


def test_rt_rebalance_as_another_user_is_refused_before_anything(docker_client: Any, unchanged: None) -> None:
    proc = _as_nobody("rt", "rebalance")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ROOT_SENTENCE


# --- containers whose labels cannot be read ---------------------------------------------------------


def _by_hand(client: Any, busybox_image: str, name: str, labels: dict[str, str]) -> Any:
    return client.containers.run(
        busybox_image,
        ["/bin/busybox", "sleep", "600"],
        name=name,
        detach=True,
        labels={"io.docker-xms.managed": "true", TEST_LABEL: "bad-inputs", **labels},
    )


def _shares_without(client: Any, skipped: set[str]) -> dict[str, int]:
    """Budgets by the kernel's rule when the `skipped` containers (holding 0) are not among the members."""
    running = client.containers.list(filters={"label": "io.docker-xms.managed=true"})
    members = {c.id: int(c.labels.get("io.docker-xms.rt-weight", "1")) for c in running if c.id not in skipped}
    total = sum(members.values())
    # The pool as the kernel's rule gives it: the skipped containers hold 0, so they change nothing there.
    root = int((PARENT.parent / "cpu.rt_runtime_us").read_text())
    siblings = sum(
        int((g / "cpu.rt_runtime_us").read_text())
        for g in PARENT.parent.iterdir()
        if g.is_dir() and g != PARENT and (g / "cpu.rt_runtime_us").is_file()
    )
    held = sum(
        int((g / "cpu.rt_runtime_us").read_text())
        for g in PARENT.iterdir()
        if g.is_dir() and g.name not in members and (g / "cpu.rt_runtime_us").is_file()
    )
    pool = root - siblings - held
    cap = os.environ.get("DOCKER_XMS_RT_POOL_US")
    pool = min(pool, int(cap)) if cap else pool
    return {cid: pool * w // total for cid, w in members.items()}


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"io.docker-xms.rt-weight": "0"}, "label io.docker-xms.rt-weight='0' is not a whole number from 1 to 100"),
        (
            {"io.docker-xms.rt-weight": "heavy"},
            "label io.docker-xms.rt-weight='heavy' is not a whole number from 1 to 100",
        ),
        (
            # What a media range without a name used to give.
            {"io.docker-xms.dnat": "30000/udp/udp:30000-30009>30000-30009"},
            "label io.docker-xms.dnat='30000/udp/udp:30000-30009>30000-30009' is malformed; "
            "expected rtp/udp:20000-24000>49152-53152 (a name of up to 32 characters)",
        ),
    ],
    ids=["weight-0", "weight-text", "media-range"],
)
def test_a_container_whose_labels_cannot_be_read_is_skipped_and_reported(
    docker_client: Any, rtpengine_image: str, busybox_image: str, cleanup: None, labels: dict[str, str], reason: str
) -> None:
    bad = _by_hand(docker_client, busybox_image, f"{PREFIX}labels", labels)
    sentence = f"Skipped {PREFIX}labels: {reason}; it gets no share of the pool and no new port rule."
    # A run beside it still works, and gets its share by the kernel's rule.
    result = run_cli("run", "-c", "--no-wait", "--media-ports", "10", "--name", f"{PREFIX}ok", "--json")
    assert result.code == 0, result.err
    good = json.loads(result.out)["id"]
    with open(PARENT / good / "cpu.rt_runtime_us", "w") as fh:
        fh.write("1000")

    rebalanced = run_cli("rt", "rebalance")
    assert rebalanced.code == 0, rebalanced.err
    assert sentence in rebalanced.out.splitlines()
    assert runtime_of(good) == _shares_without(docker_client, {bad.id})[good]
    assert runtime_of(bad.id) == 0

    as_json = run_cli("rt", "rebalance", "--json")
    assert as_json.code == 0, as_json.err
    assert json.loads(as_json.out)["skipped"] == [{"id": bad.id, "name": f"{PREFIX}labels", "reason": reason}]

    status = run_cli("rt", "status")
    assert status.code == 0, status.err
    assert sentence in status.out.splitlines()

    once = run_cli("agent", "--once")
    assert once.code == 0, once.err
    assert sentence in (once.out + once.err).splitlines()


def test_start_of_two_one_to_one_containers_is_refused_before_either_starts(
    docker_client: Any, rtpengine_image: str, cleanup: None
) -> None:
    names = [f"{PREFIX}one-a", f"{PREFIX}one-b"]
    for name in names:
        started = run_cli("run", "--no-wait", "--no-agent", "--media-ports", "10", "--name", name, timeout=120)
        if "already runs with 1:1 host ports" in started.err or "is already in use" in started.err:
            pytest.skip(f"this host's 1:1 ports are held by a server these tests did not start: {started.err}")
        assert started.code == 0, started.err
        assert run_cli("stop", name).code == 0
    before = _host(docker_client)
    result = run_cli("start", *names)
    _refused(result, f"error: Only one 1:1 container can run on a host; start one of {', '.join(names)}.")
    assert _host(docker_client) == before
    assert {docker_client.containers.get(n).status for n in names} == {"exited"}


def test_start_of_a_container_docker_xms_does_not_manage_is_refused(
    docker_client: Any, busybox_image: str, cleanup: None
) -> None:
    name = f"{PREFIX}plain"
    docker_client.containers.create(
        busybox_image, ["/bin/busybox", "sleep", "60"], name=name, labels={TEST_LABEL: "bad"}
    )
    before = _host(docker_client)
    result = run_cli("start", name)
    _refused(result, f"error: {name} is not managed by docker-xms; start it with docker start.")
    assert _host(docker_client) == before
    assert docker_client.containers.get(name).status == "created"
