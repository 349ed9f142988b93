"""What `run` asks the engine for on a cgroup v2 host: no write access to the host's cgroups from inside.

The host is a directory tree laid out like a unified (v2) host's /sys, /proc and /boot (tests/layouts.py),
read by the same detection `run` uses; the create arguments are those `run` has the engine pass to the SDK.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, cast

import pytest

from docker_xms.adapters import cgroups
from docker_xms.adapters.engine import sdk_arguments
from docker_xms.domain import ports as port_plans
from docker_xms.domain.boot import podman_systemd_mode, systemd_boot, v2_systemd_refusal
from docker_xms.domain.engine_types import engine_kind
from docker_xms.domain.profiles import parse_profile
from docker_xms.domain.recipes import GATE_ENTRYPOINT
from docker_xms.errors import BadInput
from docker_xms.usecases.rt import RtHost
from docker_xms.usecases.run import RunRequest, _create_spec
from tests import layouts


def _args_for(root: Path, unified: bool) -> dict[str, Any]:
    sys, proc, boot = layouts.unified_host(root, "") if unified else layouts.hybrid_host(root)
    host = cgroups.detect_host(sys, proc, boot)
    assert host.cgroup_version == (2 if unified else 1)
    # The engine is not called while the arguments are put together.
    rt = RtHost(engine=cast(Any, None), host=host, fs=cgroups.CgroupFs(sys / "fs/cgroup"), driver="systemd", parent="")
    text = (resources.files("docker_xms") / "profiles" / "rtpengine.toml").read_text("utf-8")
    profile = parse_profile(text, "rtpengine.toml")
    plan = port_plans.plan_ports(
        profile.ports, profile.media_ranges, "container-address", "dnat", host_pool=(20000, 32767)
    )
    spec = _create_spec(rt, profile, RunRequest(container_address=True), "container-address", plan, profile.image)
    return sdk_arguments(spec)


def _binds_of_host_cgroups(args: dict[str, Any]) -> list[str]:
    volumes = args.get("volumes") or {}
    mounts = args.get("mounts") or []
    found = [f"{source}:{spec}" for source, spec in volumes.items() if str(source).startswith("/sys/fs/cgroup")]
    found += [str(m) for m in mounts if "/sys/fs/cgroup" in str(m)]
    return found


def test_a_v2_host_gets_a_private_cgroup_namespace_and_no_bind_of_the_hosts_cgroup_tree(tmp_path: Path) -> None:
    args = _args_for(tmp_path, unified=True)

    assert args["cgroupns"] == "private"
    assert _binds_of_host_cgroups(args) == []
    assert not args.get("privileged")
    assert {"name": "rtprio", "soft": 99, "hard": 99} in args["ulimits"]
    assert set(args["tmpfs"]) >= {"/run", "/run/lock"}
    # Writable, as systemd needs: the private namespace's own subtree only, by the engine's option.
    assert args["security_opt"] == ["writable-cgroups=true"]
    assert "cpu_rt_runtime" not in args


def test_v1_binds_no_host_cgroup_and_gates_systemd_in_a_private_namespace(tmp_path: Path) -> None:
    args = _args_for(tmp_path, unified=False)
    # No cgroup file of the host's in the container: the engine mounts the container's own, read-only.
    assert _binds_of_host_cgroups(args) == []
    assert args["cgroupns"] == "private"
    # The gate waits for docker-xms to open the systemd subtree, then runs the image's own command.
    assert args["entrypoint"] == list(GATE_ENTRYPOINT)
    assert args["command"] == ["/sbin/init"]


def test_the_refusal_for_an_engine_without_writable_cgroups_is_one_sentence_with_the_ways_out_in_order() -> None:
    answer = v2_systemd_refusal()
    assert "\n" not in answer
    ways = [answer.index(way) for way in ("28 or later", "--userns-remap=default", "cgroup v1")]
    assert ways == sorted(ways)


def test_podmans_systemd_mode_is_known_by_the_command_as_podman_decides_it() -> None:
    assert podman_systemd_mode(("/sbin/init",))
    assert podman_systemd_mode(("/usr/lib/systemd/systemd", "--log-level=info"))
    assert not podman_systemd_mode(("/bin/sh", "-c", "exec /sbin/init"))
    assert not podman_systemd_mode(())


def test_an_image_whose_command_podman_would_not_run_in_systemd_mode_is_one_sentence_naming_it() -> None:
    with pytest.raises(BadInput) as refused:
        systemd_boot(2, (), ("/bin/sh", "-c", "x" * 500), engine="podman")
    said = refused.value.message
    assert said.startswith("Podman runs systemd in a container only when the image's command is systemd or /sbin/init")
    assert "\n" not in said
    assert len(said) < 400


def test_the_engine_kind_is_told_by_the_components_of_its_version() -> None:
    assert engine_kind([{"Name": "Engine", "Version": "26.1.5"}]) == "docker"
    assert engine_kind([{"Name": "Podman Engine", "Version": "5.4.2"}, {"Name": "Conmon"}]) == "podman"
    # What an engine says of itself is bounded: anything else is Docker's behaviour.
    assert engine_kind(None) == engine_kind("Podman") == engine_kind([["Podman"]]) == "docker"
