"""The plan: what an image's wait unit says and reads, what Compose files give replicas, and the handover
through the reconciler (in-memory fakes of tests/fakes.py, the real plan file and a /proc copy in a
temporary dir)."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from docker_xms.adapters import adoption_store, hostproc
from docker_xms.adapters.config import load_settings
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain.adoption import origin
from docker_xms.domain.compose import ComposeOptions, compose_file, service_labels
from docker_xms.domain.forwards import DnatForward
from docker_xms.domain.labels import (
    ADVERTISE_LABEL,
    LABEL_STRATEGY,
    PLAN_HANDED,
    PLAN_LABEL,
    PLAN_PENDING,
    PLAN_WAIT_LABEL,
)
from docker_xms.domain.plan_unit import (
    PLAN_MARKER,
    PLAN_SCRIPT,
    PLAN_UNIT,
    plan_state,
    still_taking,
    wait_s_of,
)
from docker_xms.errors import BadInput
from docker_xms.usecases.adoption import with_plans
from docker_xms.usecases.listing import ps
from docker_xms.usecases.reconcile import reconcile
from docker_xms.usecases.rt import RtHost
from tests.fakes import FAKE_PID, FakeContainer
from tests.unit.usecase_host import Host, make_host

COMPOSE = {"com.docker.compose.project": "shop", "com.docker.compose.service": "rtpengine"}
NODE = "203.0.113.7"
# Field 22 of the container's first process's stat (its start, in clock ticks since boot); its name holds
# a parenthesis and spaces, as a process may name itself.
TICKS = "4242"
STAT = f"{FAKE_PID} (sh) x (y) S 0 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {TICKS} 1000 100 1"


@pytest.mark.parametrize(
    ("given", "waits", "running", "elapsed", "state"),
    [
        (True, True, True, 1.0, "given"),
        (True, False, False, 500.0, "given"),
        (False, True, True, 10.0, "waiting"),
        (False, True, True, 60.0, "none"),
        (False, True, False, 10.0, "none"),
        (False, False, True, 10.0, "none"),
        # A start the engine dates after this host's clock says nothing of a wait.
        (False, True, True, -5.0, "none"),
    ],
)
def test_a_plan_is_given_waiting_or_none(given: bool, waits: bool, running: bool, elapsed: float, state: str) -> None:
    assert plan_state(given, waits, running, elapsed, 60) == state


def test_the_wait_is_read_from_the_environment_as_the_unit_reads_it() -> None:
    assert wait_s_of(("PATH=/bin", "DOCKER_XMS_PLAN_WAIT_S=90")) == 90
    for bad in ("-1", "1e3", "99999", "12 ", "3601"):
        assert wait_s_of((f"DOCKER_XMS_PLAN_WAIT_S={bad}",)) == 60
    # Nothing asked it to wait (a plain `docker run` of the image), or `run` gave the plan at create.
    assert wait_s_of(()) is None
    assert wait_s_of(("DOCKER_XMS_PLAN_WAIT_S=",)) is None
    assert wait_s_of(("DOCKER_XMS_PLAN_WAIT_S=90", "DOCKER_XMS_PLAN=given")) is None
    # Handed no later than 5 s before the wait ends: the server must not start between a look and a write.
    assert still_taking(54.9, 60)
    assert not still_taking(55.0, 60)


def test_images_of_profiles_with_instance_files_hold_their_server_until_the_plan() -> None:
    rtpengine = load_profile("rtpengine")
    assert rtpengine.waits_for_plan
    assert PLAN_UNIT in rtpengine.build.enable_units
    files = {f.path: f.template for f in rtpengine.build.files}
    unit = files["/etc/systemd/system/" + PLAN_UNIT]
    assert "RequiredBy=rtpengine-daemon.service" in unit
    assert "Before=rtpengine-daemon.service" in unit
    assert PLAN_MARKER in files[PLAN_SCRIPT]
    sip = load_profile("sip")
    assert (
        "RequiredBy=kamailio.service rtpengine-daemon.service"
        in {f.path: f.template for f in sip.build.files}["/etc/systemd/system/" + PLAN_UNIT]
    )
    # XMS reads its media range from its environment, which nothing can change once it runs: no wait.
    assert not load_profile("xms").waits_for_plan


def test_a_compose_file_gives_each_replica_the_hosts_wait_settings() -> None:
    rtpengine = load_profile("rtpengine")
    service = compose_file(rtpengine, ComposeOptions(plan_wait_s=90, start_without_plan=False))["services"]["rtpengine"]
    assert service["environment"] == {"DOCKER_XMS_PLAN_WAIT_S": "90", "DOCKER_XMS_START_WITHOUT_PLAN": "false"}
    assert "environment" not in compose_file(load_profile("xms"), ComposeOptions())["services"]["xms"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DOCKER_XMS_ADVERTISE": "node-2"}, "advertise must be host or an IPv4 address"),
        ({"DOCKER_XMS_PLAN_WAIT_S": "4000"}, "plan_wait_s must be at most 3600 seconds, not 4000"),
        ({"DOCKER_XMS_PLAN_WAIT_S": "soon"}, "DOCKER_XMS_PLAN_WAIT_S must be a whole number of seconds, not 'soon'"),
        ({"DOCKER_XMS_START_WITHOUT_PLAN": "maybe"}, "DOCKER_XMS_START_WITHOUT_PLAN must be 1 or 0"),
    ],
)
def test_bad_plan_settings_are_one_sentence(env: dict[str, str], message: str, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=message):
        load_settings({"DOCKER_XMS_CONFIG": str(tmp_path / "none.toml"), **env})


def test_a_processs_start_is_read_past_a_name_with_parentheses_and_spaces(tmp_path: Path) -> None:
    (tmp_path / str(FAKE_PID)).mkdir()
    (tmp_path / str(FAKE_PID) / "stat").write_text(STAT)
    assert hostproc.start_ticks(FAKE_PID, tmp_path) == TICKS
    assert hostproc.start_ticks(FAKE_PID + 1, tmp_path) == ""


def _now(offset_s: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() + offset_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def node(tmp_path: Path) -> tuple[Host, RtHost]:
    host = make_host(tmp_path)
    host.fs.write_runtime("/docker", 950_000)
    proc = tmp_path / "proc" / str(FAKE_PID)
    proc.mkdir(parents=True)
    (proc / "stat").write_text(STAT)
    settings = dataclasses.replace(host.rt.settings, engine_proc=tmp_path / "proc", advertise=NODE)
    return host, dataclasses.replace(host.rt, settings=settings)


def _replica(host: Host, name: str, started_s_ago: float, env: tuple[str, ...] = ()) -> FakeContainer:
    labels = {**service_labels(load_profile("rtpengine"), ComposeOptions()), **COMPOSE, PLAN_WAIT_LABEL: "true"}
    container = host.engine.add(name, labels)
    container.started_at = _now(-started_s_ago)
    container.env = ("DOCKER_XMS_PLAN_WAIT_S=60", *env)
    return container


def test_a_waiting_replica_is_handed_its_node_address_and_the_host_ranges_own_numbers(
    node: tuple[Host, RtHost],
) -> None:
    host, rt = node
    # Another replica holds rtpengine's own numbers on the host: this one's are another block's.
    first = _replica(host, "shop_rtpengine_1", 2.0)
    reconcile(rt, host.netfilter)
    second = _replica(host, "shop_rtpengine_2", 2.0)

    result = reconcile(rt, host.netfilter)

    assert [h.line() for h in result.handed] == [
        f"plan given to shop_rtpengine_2: advertises {NODE}, media ports 11000-11999"
    ]
    conf = second.files["/etc/rtpengine/rtpengine.conf"].decode()
    assert "port-min = 11000\nport-max = 11999\n" in conf
    assert f"interface = pub/any!{NODE};lo/127.0.0.1\n" in conf
    # Last, and for this start only: the start of its first process.
    assert list(second.files)[-1] == PLAN_MARKER
    assert second.files[PLAN_MARKER] == f"{TICKS}\n".encode()
    # The same numbers on both sides of the forward, and media leaving from the advertised address.
    (forward,) = host.netfilter.forwards[second.id[:12]]
    assert (forward.host_start, forward.host_end, forward.container_start, forward.container_end) == (
        11000,
        11999,
        11000,
        11999,
    )
    plans = adoption_store.load(adoption_store.path_for(rt.settings.lock_path))
    assert plans[second.id][PLAN_LABEL] == PLAN_HANDED
    assert plans[second.id][ADVERTISE_LABEL] == NODE
    assert plans[first.id][PLAN_LABEL] == PLAN_HANDED
    # Adopted all the same: `ps` says where it came from, and that it has its plan.
    rows = {row.name: row for row in ps(with_plans(host.engine.list_containers(), plans, ()), lambda _: 0)}
    assert rows["shop_rtpengine_2"].origin == "compose:shop"
    # A plain `docker run` with the labels, handed its plan, is not taken for one of `run`'s.
    assert origin({**plans[second.id], LABEL_STRATEGY: "dnat"}) == "docker"
    # Given once.
    assert reconcile(rt, host.netfilter).handed == ()


def test_a_replica_whose_wait_is_over_or_that_was_given_its_plan_at_create_is_told_nothing(
    node: tuple[Host, RtHost],
) -> None:
    host, rt = node
    late = _replica(host, "shop_rtpengine_1", 57.0)
    told = _replica(host, "shop_rtpengine_2", 1.0, ("DOCKER_XMS_PLAN=given",))

    result = reconcile(rt, host.netfilter)

    assert result.handed == ()
    assert late.files == told.files == {}
    plans = adoption_store.load(adoption_store.path_for(rt.settings.lock_path))
    assert PLAN_LABEL not in plans[late.id]
    assert PLAN_LABEL not in plans[told.id]
    # Its server uses the ports in its image: the forward ends on them.
    assert host.netfilter.forwards[late.id[:12]] == [
        DnatForward("rtp", "udp", 30000, 30999, 30000, 30999, late.ip_address)
    ]


def test_a_pending_plan_whose_wait_ran_out_is_chosen_again_for_a_server_never_told(
    node: tuple[Host, RtHost],
) -> None:
    host, rt = node
    replica = _replica(host, "shop_rtpengine_1", 1.0)
    path = adoption_store.path_for(rt.settings.lock_path)
    # Chosen and pending (its first process gone before the handover, say), then its wait ran out.
    (Path(rt.settings.engine_proc) / str(FAKE_PID) / "stat").unlink()
    first = reconcile(rt, host.netfilter)
    # Said, and tried again at the next pass.
    assert [h.line() for h in first.handed] == [
        "could not hand shop_rtpengine_1 its plan: The first process of shop_rtpengine_1 is gone"
    ]
    assert adoption_store.load(path)[replica.id][PLAN_LABEL] == PLAN_PENDING
    replica.started_at = _now(-58.0)

    result = reconcile(rt, host.netfilter)

    assert [a.name for a in result.adoption.adopted] == ["shop_rtpengine_1"]
    assert PLAN_LABEL not in adoption_store.load(path)[replica.id]
    assert replica.files == {}
