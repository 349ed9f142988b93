"""The Compose file of a profile's service and the engine setting of a node's pool: pure functions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain import compose
from docker_xms.domain.compose import ComposeOptions, compose_file, merged_daemon_json
from docker_xms.domain.drain_unit import Drain
from docker_xms.domain.labels import LABEL_STRATEGY, MANAGED_LABEL, MODE_LABEL, PROFILE_LABEL
from docker_xms.domain.recipes import SYSTEMD_GATE
from docker_xms.errors import BadInput
from docker_xms.usecases.fleet import node_setup


def test_a_dnat_service_carries_what_run_gives_and_the_labels_the_agent_adopts_by() -> None:
    profile = load_profile("rtpengine")
    data = compose_file(profile, ComposeOptions(replicas=2, health_script='state=$(x); [ "$state" = a ]'))
    assert data["version"] == "3.8"
    service = data["services"]["rtpengine"]
    assert service["image"] == profile.image
    assert service["tmpfs"][:2] == ["/run", "/run/lock"]
    # No cgroup mount of the host's: the gate holds systemd until the agent opens the container's own
    # name=systemd subtree; every $ of the script escaped from Compose's interpolation.
    assert "volumes" not in service
    assert service["entrypoint"][:2] == ["/bin/sh", "-c"]
    assert service["entrypoint"][3] == "docker-xms-gate"
    assert service["entrypoint"][2].replace("$$", "$") == SYSTEMD_GATE
    assert service["command"] == ["/sbin/init"]
    assert service["cap_add"] == ["SYS_NICE"]
    assert service["stop_signal"] == "SIGRTMIN+3"
    assert service["network_mode"] == "bridge"
    assert service["labels"] == {
        MANAGED_LABEL: "true",
        PROFILE_LABEL: "rtpengine",
        LABEL_STRATEGY: "dnat",
        MODE_LABEL: "container-address",
    }
    # ng has no authentication: the loopback address only, as run publishes it.
    assert service["ports"] == ["127.0.0.1::2223/udp"]
    # Compose would read $(x) and $state as its own variables.
    assert service["healthcheck"]["test"] == ["CMD", "/bin/bash", "-c", 'state=$$(x); [ "$$state" = a ]']
    reservation = service["deploy"]["resources"]["reservations"]["generic_resources"]
    assert service["deploy"]["replicas"] == 2
    assert reservation == [{"discrete_resource_spec": {"kind": "RT_MS", "value": compose.DEFAULT_RT_MS}}]
    assert "networks" not in data


def test_a_stack_file_names_the_nodes_bridge_as_an_external_network_and_publishes_in_host_mode() -> None:
    data = compose_file(load_profile("sip"), ComposeOptions(target="stack", rt_ms=300))
    service = data["services"]["sip"]
    assert service["networks"] == ["bridge"]
    assert data["networks"] == {"bridge": {"external": True, "name": "bridge"}}
    assert "network_mode" not in service
    assert {"target": 5060, "protocol": "udp", "mode": "host"} in service["ports"]
    assert service["deploy"]["resources"]["reservations"]["generic_resources"][0]["discrete_resource_spec"] == {
        "kind": "RT_MS",
        "value": 300,
    }


def test_a_stack_file_gives_systemds_tmpfs_as_tmpfs_mounts_which_stack_deploy_keeps() -> None:
    # `docker stack deploy` drops `tmpfs`; systemd without a tmpfs on /run exits 255 at once.
    # No cgroup mount of the host's on either version.
    for version in (1, 2):
        options = ComposeOptions(target="stack", cgroup_version=version)
        service = compose_file(load_profile("rtpengine"), options)["services"]["rtpengine"]
        assert "tmpfs" not in service
        assert service["volumes"] == [{"type": "tmpfs", "target": "/run"}, {"type": "tmpfs", "target": "/run/lock"}]


def test_a_stack_file_leaves_a_port_without_authentication_unpublished() -> None:
    service = compose_file(load_profile("rtpengine"), ComposeOptions(target="stack"))["services"]["rtpengine"]
    assert "ports" not in service


def test_host_networking_places_one_replica_per_node_and_publishes_nothing() -> None:
    for target in ("compose", "stack"):
        data = compose_file(load_profile("rtpengine"), ComposeOptions(ports="host", target=target))  # type: ignore[arg-type]
        service = data["services"]["rtpengine"]
        assert "ports" not in service
        assert "sysctls" not in service
        assert service["deploy"]["placement"] == {"max_replicas_per_node": 1}
        assert service["labels"][LABEL_STRATEGY] == "host"
    assert data["networks"] == {"host": {"external": True, "name": "host"}}


def test_the_containers_ephemeral_range_moves_off_the_media_ports_as_run_does() -> None:
    service = compose_file(load_profile("xms"), ComposeOptions())["services"]["xms"]
    assert service["sysctls"] == {"net.ipv4.ip_local_port_range": "32768 49151"}
    rtpengine = compose_file(load_profile("rtpengine"), ComposeOptions())["services"]["rtpengine"]
    assert "sysctls" not in rtpengine


def test_cgroup_v2_gets_the_rtprio_limit_and_its_own_cgroup_writable_instead_of_a_cgroup_mount() -> None:
    service = compose_file(load_profile("rtpengine"), ComposeOptions(cgroup_version=2))["services"]["rtpengine"]
    assert "volumes" not in service
    assert service["ulimits"]["rtprio"] == 99
    assert (service["cgroup"], service["security_opt"]) == ("private", ["writable-cgroups=true"])


def test_the_stop_grace_period_is_the_drain_grace_plus_a_margin() -> None:
    profile = dataclasses.replace(load_profile("rtpengine"), drain=Drain(20, "true"))
    service = compose_file(profile, ComposeOptions(name="media", image="me/rtp:1"))["services"]["media"]
    assert service["stop_grace_period"] == f"{20 + compose.STOP_MARGIN_S}s"
    assert service["image"] == "me/rtp:1"
    undrained = dataclasses.replace(profile, drain=Drain())
    assert "stop_grace_period" not in compose_file(undrained, ComposeOptions())["services"]["rtpengine"]


def test_the_file_is_plain_yaml_that_reads_back_the_same() -> None:
    data = compose_file(load_profile("rtpengine"), ComposeOptions(replicas=3))
    assert yaml.safe_load(yaml.safe_dump(data)) == data


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        (ComposeOptions(replicas=-1), "--replicas must be 0 or more"),
        (ComposeOptions(ports="publish"), "--ports 'publish' is not one of dnat, host"),
        (ComposeOptions(rt_ms=0), "--rt-ms must be 1 or more"),
    ],
)
def test_bad_options_are_refused_in_one_sentence(options: ComposeOptions, sentence: str) -> None:
    with pytest.raises(BadInput, match=sentence):
        compose_file(load_profile("rtpengine"), options)


def test_the_pool_is_advertised_in_whole_ms_rounded_down() -> None:
    assert compose.pool_ms(950_000) == 950
    assert compose.pool_ms(475_999) == 475
    assert compose.pool_ms(95_000, 100_000) == 950


def test_daemon_json_keeps_every_other_setting_and_resource_and_replaces_rt_ms() -> None:
    existing = {"log-driver": "journald", "node-generic-resources": ["GPU=1", "RT_MS=100"]}
    merged = merged_daemon_json(existing, 950)
    assert merged == {"log-driver": "journald", "node-generic-resources": ["GPU=1", "RT_MS=950"]}
    assert merged_daemon_json({}, 475) == {"node-generic-resources": ["RT_MS=475"]}
    with pytest.raises(BadInput, match="not a list of strings"):
        merged_daemon_json({"node-generic-resources": "RT_MS=1"}, 950)
    with pytest.raises(BadInput, match="too small"):
        merged_daemon_json({}, 0)


def test_node_setup_writes_the_setting_into_daemon_json_keeping_the_rest(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text('{"log-level": "warn"}')
    done = node_setup(None, pool_ms=800, write=True, path=daemon)
    assert done.written
    assert json.loads(daemon.read_text()) == {"log-level": "warn", "node-generic-resources": ["RT_MS=800"]}
    printed = node_setup(None, pool_ms=800, path=tmp_path / "absent.json")
    assert json.loads(printed.text) == {"node-generic-resources": ["RT_MS=800"]}
    assert not (tmp_path / "absent.json").exists()
    daemon.write_text("{not json")
    with pytest.raises(BadInput, match="is not JSON"):
        node_setup(None, pool_ms=800, write=True, path=daemon)
