"""Read-only checks against this machine's real cgroup and proc files (nothing here writes to them)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from docker_xms.adapters.cgroups import CgroupFs, detect_host, engine_parent, thread_policies

pytestmark = pytest.mark.skipif(
    not Path("/sys/fs/cgroup/cpu/cpu.rt_runtime_us").exists(),
    reason="needs a host with the cpu controller on cgroup v1 and RT group scheduling",
)


def test_this_host_has_per_group_budgets_on_v1() -> None:
    host = detect_host()
    assert host.cgroup_version == 1
    assert host.rt_group_sched is True
    assert host.mode == "per-group"
    assert (host.rt_runtime_us, host.rt_period_us) == (950_000, 1_000_000)
    assert host.cpu_root == Path("/sys/fs/cgroup/cpu")


def test_the_cpu_root_holds_the_global_budget() -> None:
    host = detect_host()
    fs = CgroupFs(host.cpu_root)
    assert fs.read_runtime("/") == host.rt_runtime_us
    assert fs.read_period("/") == host.rt_period_us
    assert engine_parent(host, "cgroupfs") == "/docker"


def test_own_threads_parse() -> None:
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait, name="helper")
    helper.start()
    try:
        threads = thread_policies(os.getpid())
    finally:
        stop.set()
        helper.join()
    assert len(threads) >= 2
    # Thread ids are not ordered by age once pids have wrapped around: find the main thread by id.
    main = next(t for t in threads if t.tid == os.getpid())
    assert all(t.policy in {"SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE"} for t in threads)
    assert all(t.cgroup.startswith("/") for t in threads)
    own = Path(f"/proc/{os.getpid()}/comm").read_text().rstrip("\n")
    assert main.comm == own
