"""What the doctor tells a user on each kind of host, detected from directory trees like the real ones."""

from __future__ import annotations

from pathlib import Path

from docker_xms.adapters.cgroups import HostRt, detect_host, engine_parent
from docker_xms.domain.doctor import Finding, diagnose, idle_findings, inotify_findings, verdict
from tests.unit.test_cgroups import hybrid_host, kernel, unified_host


def detect(roots: tuple[Path, Path, Path]) -> HostRt:
    sys, proc, boot = roots
    return detect_host(sys_root=sys, proc_root=proc, boot_root=boot)


def text(findings: list[Finding]) -> str:
    return "\n".join(f"{f.level}: {f.message} {f.fix}" for f in findings)


def levels(findings: list[Finding]) -> set[str]:
    return {f.level for f in findings}


def test_this_machine_with_a_budgeted_parent_is_all_ok(tmp_path: Path) -> None:
    findings = diagnose(detect(hybrid_host(tmp_path)), "cgroupfs", "1", 950_000, "/docker")
    assert levels(findings) == {"ok"}
    assert verdict(findings)
    assert "950000 us of every 1000000 us" in text(findings)
    assert "/docker, which holds 950000 us" in text(findings)
    assert "CAP_SYS_NICE" in text(findings)


def test_parent_without_budget_warns_and_names_both_fixes(tmp_path: Path) -> None:
    findings = diagnose(detect(hybrid_host(tmp_path)), "cgroupfs", "1", 0, "/docker")
    warning = next(f for f in findings if f.level == "warn")
    assert "/docker" in warning.message
    assert "invalid argument" in warning.message
    assert "docker-xms sets the budget of /docker itself" in warning.fix
    assert "dockerd with --cpu-rt-runtime" in warning.fix
    assert verdict(findings)


def test_missing_parent_is_fine_because_it_is_created(tmp_path: Path) -> None:
    findings = diagnose(detect(hybrid_host(tmp_path)), "cgroupfs", "1", None, "/docker")
    assert verdict(findings)
    assert "does not exist yet" in text(findings)


def test_systemd_driver_names_system_slice_as_parent(tmp_path: Path) -> None:
    host = detect(hybrid_host(tmp_path))
    findings = diagnose(host, "systemd", "1", 0, engine_parent(host, "systemd"))
    assert "Containers live in /system.slice (system.slice/docker-<id>.scope" in text(findings)
    assert "docker-xms sets the budget of /system.slice itself" in text(findings)


def test_v2_without_rt_group_sched_uses_cap_sys_nice_and_no_budgets(tmp_path: Path) -> None:
    host = detect(unified_host(tmp_path, "# CONFIG_RT_GROUP_SCHED is not set"))
    findings = diagnose(host, "systemd", "2", None, "/system.slice")
    assert verdict(findings)
    said = text(findings)
    assert "SCHED_FIFO works in a container with CAP_SYS_NICE, without a per-container budget" in said
    assert "--cap-add SYS_NICE" in said
    assert "Docker refuses --cpu-rt-runtime on cgroup v2" in said
    assert "kernel does not support CPU real-time scheduler" in said


def test_v2_with_rt_group_sched_fails_and_says_what_to_change(tmp_path: Path) -> None:
    host = detect(unified_host(tmp_path, "CONFIG_RT_GROUP_SCHED=y"))
    findings = diagnose(host, "systemd", "2", None, "/system.slice")
    assert not verdict(findings)
    failure = next(f for f in findings if f.level == "fail")
    assert "SCHED_FIFO fails inside containers" in failure.message
    assert "systemd.unified_cgroup_hierarchy=0" in failure.fix
    assert "CONFIG_RT_GROUP_SCHED" in failure.fix


def test_v2_with_unknown_kernel_config_warns(tmp_path: Path) -> None:
    findings = diagnose(detect(unified_host(tmp_path, None)), "systemd", "2", None, "/system.slice")
    assert verdict(findings)
    assert "Cannot tell whether the kernel has CONFIG_RT_GROUP_SCHED" in text(findings)


def test_zero_global_runtime_says_no_real_time_and_the_sysctl(tmp_path: Path) -> None:
    findings = diagnose(detect(hybrid_host(tmp_path, runtime=0)), "cgroupfs", "1", 0, "/docker")
    assert not verdict(findings)
    assert findings == [
        Finding(
            "fail",
            "The kernel allows no real-time scheduling at all: kernel.sched_rt_runtime_us is 0.",
            "Set kernel.sched_rt_runtime_us to 950000 (sysctl -w kernel.sched_rt_runtime_us=950000, "
            "and in /etc/sysctl.d/ to keep it after a reboot).",
        )
    ]


def test_zero_global_runtime_on_v2_also_fails(tmp_path: Path) -> None:
    sys, proc, boot = unified_host(tmp_path, "# CONFIG_RT_GROUP_SCHED is not set")
    kernel(proc, runtime=0)
    assert not verdict(diagnose(detect((sys, proc, boot)), "systemd", "2", None, "/system.slice"))


def test_unlimited_global_runtime_warns_about_freezing_the_host(tmp_path: Path) -> None:
    findings = diagnose(detect(hybrid_host(tmp_path, runtime=-1)), "cgroupfs", "1", 950_000, "/docker")
    assert verdict(findings)
    assert any(f.level == "warn" and "kernel.sched_rt_runtime_us is -1" in f.message for f in findings)


def test_engine_on_v2_while_cpu_is_on_v1_fails(tmp_path: Path) -> None:
    findings = diagnose(detect(hybrid_host(tmp_path)), "cgroupfs", "2", 950_000, "/docker")
    assert not verdict(findings)


def test_v1_without_rt_group_sched_is_global(tmp_path: Path) -> None:
    sys, proc, boot = hybrid_host(tmp_path)
    (sys / "fs/cgroup/cpu/cpu.rt_runtime_us").unlink()
    findings = diagnose(detect((sys, proc, boot)), "cgroupfs", "1", None, "/docker")
    assert verdict(findings)
    assert "without CONFIG_RT_GROUP_SCHED" in text(findings)


NO_LIMIT = 2_000_000_000


def test_a_halting_vcpu_without_a_latency_limit_is_a_warning_that_names_the_fix() -> None:
    (finding,) = idle_findings("haltpoll", NO_LIMIT, NO_LIMIT)
    assert finding.level == "warn"
    assert "no limit is held" in finding.message
    assert "virtual machine" in finding.message
    assert "--cpu-latency-us 0" in finding.fix
    assert verdict([finding])  # real-time still works; wake-ups from idle are only slower


def test_a_loose_limit_on_bare_metal_is_named_without_the_virtual_machine() -> None:
    (finding,) = idle_findings("intel_idle", 100, NO_LIMIT)
    assert finding.level == "warn"
    assert "the limit held is 100 us" in finding.message
    assert "virtual machine" not in finding.message


def test_a_held_limit_is_ok_and_no_idle_driver_says_nothing() -> None:
    assert idle_findings("haltpoll", 0, NO_LIMIT) == [
        Finding("ok", "CPU wake-up latency is held at 0 us (cpuidle driver haltpoll).")
    ]
    assert idle_findings("", NO_LIMIT, NO_LIMIT) == []
    assert idle_findings("none", NO_LIMIT, NO_LIMIT) == []
    assert idle_findings("acpi_idle", None, NO_LIMIT) == []


def test_a_low_inotify_limit_is_a_warning_with_the_sysctl_to_raise_it() -> None:
    (finding,) = inotify_findings(128)
    assert finding.level == "warn"
    assert "only about 21 systemd containers" in finding.message
    assert "fs.inotify.max_user_instances=1024" in finding.fix
    assert [f.level for f in inotify_findings(1024)] == ["ok"]
    assert inotify_findings(None) == []
