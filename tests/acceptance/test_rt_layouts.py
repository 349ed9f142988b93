"""`rt status` and `rt doctor` on hosts laid out unlike this one: cgroup v2, the systemd driver."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_cli
from tests.layouts import hybrid_host, put, unified_host, v1_group


def _env(roots: tuple[Path, Path, Path], **extra: str) -> dict[str, str]:
    sys, proc, boot = roots
    return {
        "DOCKER_XMS_SYS_ROOT": str(sys),
        "DOCKER_XMS_PROC_ROOT": str(proc),
        "DOCKER_XMS_BOOT_ROOT": str(boot),
        **extra,
    }


def test_v2_without_rt_group_sched_needs_only_cap_sys_nice(tmp_path: Path) -> None:
    env = _env(unified_host(tmp_path, "# CONFIG_RT_GROUP_SCHED is not set"))
    doctor = run_cli("rt", "doctor", "--json", env=env)
    assert doctor.code == 0, doctor.err
    report = json.loads(doctor.out)
    assert report["real_time_works"] is True
    text = " ".join(f["message"] + " " + f["fix"] for f in report["findings"])
    assert "CAP_SYS_NICE" in text
    status = json.loads(run_cli("rt", "status", "--json", env=env).out)
    assert status["mode"] == "global"
    assert status["cgroup_version"] == 2
    human = run_cli("rt", "status", env=env)
    assert "No per-container budgets on this host" in human.out


def test_v2_with_rt_group_sched_fails_and_says_what_to_change(tmp_path: Path) -> None:
    env = _env(unified_host(tmp_path, "CONFIG_RT_GROUP_SCHED=y"))
    doctor = run_cli("rt", "doctor", env=env)
    assert doctor.code == 1
    assert "SCHED_FIFO fails inside containers" in doctor.out
    assert "systemd.unified_cgroup_hierarchy=0" in doctor.out
    assert json.loads(run_cli("rt", "status", "--json", env=env).out)["mode"] == "v2-rt-group"


def test_no_real_time_at_all(tmp_path: Path) -> None:
    env = _env(hybrid_host(tmp_path, runtime=0))
    doctor = run_cli("rt", "doctor", env=env)
    assert doctor.code == 1
    assert "sched_rt_runtime_us" in doctor.out


def test_systemd_driver_parent_is_system_slice(tmp_path: Path) -> None:
    roots = hybrid_host(tmp_path)
    cpu = roots[0] / "fs/cgroup/cpu"
    v1_group(cpu / "user.slice", 50_000)
    v1_group(cpu / "system.slice", 600_000)
    foreign = "f" * 64
    v1_group(cpu / "system.slice" / f"docker-{foreign}.scope", 100_000)
    v1_group(cpu / "system.slice" / "cron.service", 0)
    put(cpu / "system.slice" / "cgroup.procs", "")
    env = _env(roots, DOCKER_XMS_CGROUP_DRIVER="systemd")
    status = json.loads(run_cli("rt", "status", "--json", env=env).out)
    assert status["parent"] == "/system.slice"
    assert status["mode"] == "per-group"
    assert status["siblings_us"] == 50_000
    assert status["capacity_us"] == 900_000
    assert status["foreign_us"] == 100_000
    assert status["pool_us"] == 800_000
    assert [h["name"] for h in status["foreign"]] == [f"docker-{foreign}.scope"]
    doctor = run_cli("rt", "doctor", "--json", env=env)
    text = " ".join(f["message"] for f in json.loads(doctor.out)["findings"])
    assert "/system.slice" in text


def test_a_stock_v2_host_with_cpus_to_spare_shares_real_time_by_cpu_sets(tmp_path: Path) -> None:
    """`rt_mode = auto` on cgroup v2 without group scheduling: CPU sets, housekeeping on CPU 0; `budgets`
    refused there in one sentence."""
    roots = unified_host(tmp_path, "# CONFIG_RT_GROUP_SCHED is not set")
    put(roots[0] / "devices/system/cpu/online", "0-3\n")
    env = _env(roots)
    status = json.loads(run_cli("rt", "status", "--json", env=env).out)
    assert (status["mode"], status["housekeeping_cpus"], status["media_cpus"]) == ("cpus", "0", "1-3")
    human = run_cli("rt", "status", env=env)
    assert "CPU sets: housekeeping CPU 0; media CPU 1-3" in human.out
    two = json.loads(run_cli("rt", "status", "--json", env={**env, "DOCKER_XMS_HOUSEKEEPING_CPUS": "2"}).out)
    assert two["media_cpus"] == "2-3"
    refused = run_cli("rt", "status", env={**env, "DOCKER_XMS_RT_MODE": "budgets"})
    assert refused.code == 2
    assert "rt_mode = budgets needs per-group real-time budgets" in refused.err
