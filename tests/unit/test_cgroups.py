"""Host detection and cgroup files, read from directory trees laid out like real hosts."""

from __future__ import annotations

import errno
import gzip
from pathlib import Path

import pytest

from docker_xms.adapters.cgroups import (
    CgroupFs,
    CgroupWriteError,
    HostRt,
    container_cgroup,
    cpu_cgroup,
    detect_host,
    engine_parent,
    parse_steal_ms,
    thread_policies,
)
from docker_xms.domain.cgroup_types import GroupRuntime
from docker_xms.errors import BadInput, NotFound, XmsError
from tests.layouts import (
    hybrid_host,
    kernel,
    put,
    unified_host,
    v1_group,
)


def detect(roots: tuple[Path, Path, Path]) -> HostRt:
    sys, proc, boot = roots
    return detect_host(sys_root=sys, proc_root=proc, boot_root=boot)


def test_this_machines_layout_is_per_group_on_v1(tmp_path: Path) -> None:
    host = detect(hybrid_host(tmp_path))
    assert host == HostRt(1, True, 950_000, 1_000_000, "per-group", tmp_path / "sys/fs/cgroup/cpu")


def test_cpu_controller_shared_with_cpuacct_is_found_through_the_mount_table(tmp_path: Path) -> None:
    host = detect(hybrid_host(tmp_path, cpu_dir="cpu,cpuacct"))
    assert host.cpu_root == tmp_path / "sys/fs/cgroup/cpu,cpuacct"
    assert host.mode == "per-group"


def test_without_a_mount_table_the_usual_cpu_directory_is_used(tmp_path: Path) -> None:
    sys, proc, boot = hybrid_host(tmp_path, cpu_dir="cpu,cpuacct")
    (proc / "self/mounts").unlink()
    assert detect((sys, proc, boot)).cpu_root == sys / "fs/cgroup/cpu,cpuacct"


def test_mount_points_with_escaped_spaces_are_decoded(tmp_path: Path) -> None:
    sys, proc, boot = hybrid_host(tmp_path, cpu_dir="my cpu")
    put(proc / "self/mounts", "cgroup /sys/fs/cgroup/my\\040cpu cgroup rw,cpu 0 0\n")
    assert detect((sys, proc, boot)).cpu_root == sys / "fs/cgroup/my cpu"


def test_v1_without_rt_group_sched_is_global(tmp_path: Path) -> None:
    sys, proc, boot = hybrid_host(tmp_path)
    (sys / "fs/cgroup/cpu/cpu.rt_runtime_us").unlink()
    (sys / "fs/cgroup/cpu/cpu.rt_period_us").unlink()
    host = detect((sys, proc, boot))
    assert (host.cgroup_version, host.rt_group_sched, host.mode) == (1, False, "global")


def test_v2_without_rt_group_sched_is_global(tmp_path: Path) -> None:
    host = detect(unified_host(tmp_path, "# CONFIG_RT_GROUP_SCHED is not set"))
    assert host == HostRt(2, False, 950_000, 1_000_000, "global", tmp_path / "sys/fs/cgroup")


def test_v2_with_rt_group_sched_is_v2_rt_group(tmp_path: Path) -> None:
    host = detect(unified_host(tmp_path, "CONFIG_RT_GROUP_SCHED=y"))
    assert (host.cgroup_version, host.rt_group_sched, host.mode) == (2, True, "v2-rt-group")


def test_v2_config_is_read_from_proc_config_gz_first(tmp_path: Path) -> None:
    sys, proc, boot = unified_host(tmp_path, "# CONFIG_RT_GROUP_SCHED is not set")
    (proc / "config.gz").write_bytes(gzip.compress(b"CONFIG_RT_GROUP_SCHED=y\n"))
    assert detect((sys, proc, boot)).rt_group_sched is True


def test_v2_without_a_readable_config_is_unknown(tmp_path: Path) -> None:
    host = detect(unified_host(tmp_path, None))
    assert (host.rt_group_sched, host.mode) == (None, "global")


def test_v2_rt_group_sched_switched_off_at_boot_is_off(tmp_path: Path) -> None:
    host = detect(unified_host(tmp_path, "CONFIG_RT_GROUP_SCHED=y", cmdline="ro rt_group_sched=0"))
    assert host.rt_group_sched is False


def test_v2_rt_group_sched_disabled_by_default_is_off_unless_switched_on(tmp_path: Path) -> None:
    config = "CONFIG_RT_GROUP_SCHED=y\nCONFIG_RT_GROUP_SCHED_DEFAULT_DISABLED=y"
    assert detect(unified_host(tmp_path / "a", config)).rt_group_sched is False
    assert detect(unified_host(tmp_path / "b", config, cmdline="ro rt_group_sched=1")).rt_group_sched is True


def test_unlimited_global_runtime_keeps_per_group_mode(tmp_path: Path) -> None:
    host = detect(hybrid_host(tmp_path, runtime=-1))
    assert (host.rt_runtime_us, host.mode) == (-1, "per-group")


def test_zero_global_runtime_means_no_real_time(tmp_path: Path) -> None:
    assert detect(hybrid_host(tmp_path / "v1", runtime=0)).mode == "none"
    sys, proc, boot = unified_host(tmp_path / "v2", "# CONFIG_RT_GROUP_SCHED is not set")
    kernel(proc, runtime=0)
    assert detect((sys, proc, boot)).mode == "none"


def test_no_cgroup_mount_is_a_clear_error(tmp_path: Path) -> None:
    kernel(tmp_path / "proc")
    put(tmp_path / "proc/self/mounts", "sysfs /sys sysfs rw 0 0\n")
    with pytest.raises(XmsError, match="cpu cgroup controller"):
        detect_host(tmp_path / "sys", tmp_path / "proc", tmp_path / "boot")


def test_cgroupfs_driver_parent_is_docker_or_the_given_parent(tmp_path: Path) -> None:
    host = detect(hybrid_host(tmp_path))
    assert engine_parent(host, "cgroupfs") == "/docker"
    assert engine_parent(host, "cgroupfs", "/media/rt/") == "/media/rt"
    assert container_cgroup("/docker", "cgroupfs", "abc123") == "/docker/abc123"


def test_systemd_driver_parent_is_system_slice_or_the_nested_slice(tmp_path: Path) -> None:
    host = detect(hybrid_host(tmp_path))
    assert engine_parent(host, "systemd") == "/system.slice"
    assert engine_parent(host, "systemd", "my.slice") == "/my.slice"
    assert engine_parent(host, "systemd", "a-b.slice") == "/a.slice/a-b.slice"
    assert engine_parent(host, "systemd", "a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"
    assert container_cgroup("/system.slice", "systemd", "abc123") == "/system.slice/docker-abc123.scope"


@pytest.mark.parametrize("bad", ["my", "/my.slice", "a--b.slice", "-a.slice"])
def test_systemd_driver_refuses_what_is_not_a_slice(tmp_path: Path, bad: str) -> None:
    host = detect(hybrid_host(tmp_path))
    with pytest.raises(BadInput):
        engine_parent(host, "systemd", bad)


def test_unknown_driver_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput):
        engine_parent(detect(hybrid_host(tmp_path)), "lxc")


def test_runtime_is_read_and_written_in_the_group_files(tmp_path: Path) -> None:
    root = tmp_path / "cpu"
    v1_group(root, 950_000)
    v1_group(root / "docker", 950_000)
    fs = CgroupFs(root)
    fs.write_runtime("/docker", 1000)
    assert (root / "docker/cpu.rt_runtime_us").read_text() == "1000\n"
    assert fs.read_runtime("/docker") == 1000
    assert fs.read_period("/docker") == 1_000_000
    assert fs.read_runtime("/") == 950_000


def test_missing_parent_is_created(tmp_path: Path) -> None:
    fs = CgroupFs(tmp_path / "cpu")
    v1_group(tmp_path / "cpu", 950_000)
    assert not fs.exists("/docker")
    fs.ensure("/docker")
    fs.ensure("/docker")
    assert fs.exists("/docker")


def test_paths_leaving_the_root_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput):
        CgroupFs(tmp_path).read_runtime("/docker/../../etc")


def test_refused_write_names_the_file_the_value_and_the_reason(tmp_path: Path) -> None:
    fs = CgroupFs(tmp_path / "cpu")
    with pytest.raises(CgroupWriteError) as caught:
        fs.write_runtime("/docker/gone", 400_000)
    message = caught.value.message
    assert str(tmp_path / "cpu/docker/gone/cpu.rt_runtime_us") in message
    assert "400000" in message
    assert "no such file" in message
    assert caught.value.exit_code == 1


def test_kernel_reasons_are_explained() -> None:
    path = Path("/sys/fs/cgroup/cpu/docker/cpu.rt_runtime_us")
    einval = CgroupWriteError(path, 400_000, OSError(errno.EINVAL, "Invalid argument"))
    assert einval.message == (
        "The kernel refused 400000 for /sys/fs/cgroup/cpu/docker/cpu.rt_runtime_us: invalid argument "
        "(the parent cgroup holds too little real-time runtime for its children, or the value is outside "
        "0 to the period)."
    )
    assert "real-time threads" in CgroupWriteError(path, 0, OSError(errno.EBUSY, "busy")).message
    assert "run as root" in CgroupWriteError(path, 1, OSError(errno.EPERM, "no")).message


def test_children_list_runtime_and_period(tmp_path: Path) -> None:
    root = tmp_path / "cpu"
    v1_group(root, 950_000)
    v1_group(root / "docker", 950_000)
    v1_group(root / "docker/aaa", 475_000)
    v1_group(root / "docker/bbb", 50_000, period=500_000)
    (root / "docker/not-a-group").mkdir()
    assert CgroupFs(root).children("/docker") == [
        GroupRuntime("aaa", 475_000, 1_000_000),
        GroupRuntime("bbb", 50_000, 500_000),
    ]


def test_siblings_of_the_systemd_parent_reduce_its_capacity(tmp_path: Path) -> None:
    root = tmp_path / "cpu"
    v1_group(root, 950_000)
    v1_group(root / "system.slice", 600_000)
    v1_group(root / "system.slice/docker-abc.scope", 600_000)
    v1_group(root / "user.slice", 100_000)
    v1_group(root / "rt.slice", 50_000, period=500_000)  # 100,000 per second
    fs = CgroupFs(root)
    assert fs.sibling_runtime("/system.slice") == 200_000
    assert fs.sibling_runtime("/system.slice/docker-abc.scope") == 0
    assert fs.sibling_runtime("/") == 0


STAT_TAIL = (
    "S 1 4242 4242 0 -1 4194560 100 0 0 0 1 1 0 0 -51 0 3 0 51460 5124096 928 18446744073709551615 "
    "1 1 0 0 0 0 0 0 0 0 0 0 17 1 {prio} {policy} 0 0 0 1 1 1 1 1 1 1 0"
)


def fake_thread(proc: Path, pid: int, tid: int, comm: str, policy: int, prio: int, cgroup: str) -> None:
    task = proc / str(pid) / "task" / str(tid)
    put(task / "stat", f"{tid} ({comm}) " + STAT_TAIL.format(prio=prio, policy=policy) + "\n")
    put(task / "cgroup", cgroup)


def test_thread_policies_read_every_thread(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    v1 = "9:name=systemd:/docker/abc\n3:cpuacct:/\n2:cpu:/docker/abc\n0::/\n"
    fake_thread(proc, 4242, 4242, "rtpengine", 0, 0, v1)
    fake_thread(proc, 4242, 4250, "poller (1) x)", 1, 50, v1)
    fake_thread(proc, 4242, 4251, "timer", 2, 10, "4:cpu,cpuacct:/system.slice/docker-abc.scope\n")
    threads = thread_policies(4242, proc_root=proc)
    assert [(t.tid, t.comm, t.policy, t.rt_priority, t.cgroup) for t in threads] == [
        (4242, "rtpengine", "SCHED_OTHER", 0, "/docker/abc"),
        (4250, "poller (1) x)", "SCHED_FIFO", 50, "/docker/abc"),
        (4251, "timer", "SCHED_RR", 10, "/system.slice/docker-abc.scope"),
    ]


def test_thread_cgroup_on_v2_comes_from_the_unified_line() -> None:
    assert cpu_cgroup("0::/system.slice/docker-abc.scope\n") == "/system.slice/docker-abc.scope"


def test_thread_policies_of_a_missing_process_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        thread_policies(99999, proc_root=tmp_path)


def test_steal_is_the_eighth_number_of_the_cpu_line_in_ticks() -> None:
    stat = "cpu  587939 0 298597 989710 8299 0 3597 8234 0 0\ncpu0 1 2 3 4 5 6 7 99 0 0\nintr 1\n"
    assert parse_steal_ms(stat, 100) == 82340.0
    assert parse_steal_ms(stat, 250) == 32936.0


def test_a_kernel_without_a_steal_column_has_stolen_nothing() -> None:
    assert parse_steal_ms("cpu  1 2 3 4 5 6 7\n", 100) == 0.0
    assert parse_steal_ms("intr 1\n", 100) == 0.0


def test_procs_under_a_group_include_its_sub_groups_and_none_when_it_is_gone(tmp_path: Path) -> None:
    put(tmp_path / "cpu/docker/aaa/cgroup.procs", "101\n102\n")
    put(tmp_path / "cpu/docker/aaa/system.slice/media.service/cgroup.procs", "201\n")
    fs = CgroupFs(tmp_path / "cpu")
    assert fs.procs_under("/docker/aaa") == {101, 102, 201}
    assert fs.procs_under("/docker/gone") == set()
