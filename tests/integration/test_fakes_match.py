"""The in-memory cgroup files of the unit tests accept and refuse what this machine's kernel does.

The same writes go to a temporary group the test makes beside the containers' groups in the engine's
parent (/sys/fs/cgroup/cpu/docker) and to a `FakeCgroupFs` laid out like the real tree, and each write
must have the same outcome: accepted, or refused with the same errno. The docker-xms host lock is held
meanwhile, so no rebalance counts the test's group; it is set back to 0 and removed whatever happens.

What can be accepted depends on the room the parent has left (its runtime minus its children's): the
writes are laid out around that room, so they test the limits whatever it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from docker_xms.adapters.cgroups import CgroupFs, CgroupWriteError, detect_host
from docker_xms.adapters.hostlock import host_lock
from docker_xms.settings import DEFAULT_LOCK
from docker_xms.usecases import rt as rt_module
from tests.fakes import FakeCgroupFs

CPU = Path("/sys/fs/cgroup/cpu")
PARENT = "/docker"
PERIOD = 1_000_000

pytestmark = pytest.mark.skipif(
    not (CPU / "cpu.rt_runtime_us").exists(), reason="needs cgroup v1 with real-time group scheduling"
)


def _outcome(action: object) -> str:
    try:
        action()  # type: ignore[operator]
    except CgroupWriteError as exc:
        return errno.errorcode[exc.errno or 0]
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return "ok"


class Both:
    """One group path, written on the real tree and on the fake, the outcomes kept side by side."""

    def __init__(self, real: CgroupFs, fake: FakeCgroupFs) -> None:
        self.real = real
        self.fake = fake
        self.outcomes: list[tuple[str, str, str]] = []
        self.made: list[str] = []

    def mkdir(self, rel: str) -> None:
        self.real.path(rel).mkdir()
        self.made.append(rel)
        self.fake.mkdir(rel)

    def write(self, rel: str, value: int) -> None:
        real = _outcome(lambda: self.real.write_runtime(rel, value))
        fake = _outcome(lambda: self.fake.write_runtime(rel, value))
        self.outcomes.append((f"{rel} <- {value}", real, fake))

    def attach(self, rel: str, tid: int, fifo: bool) -> None:
        """Move a thread into the group (SCHED_FIFO when `fifo`), on both."""
        real = _outcome(lambda: (self.real.path(rel) / "tasks").write_text(f"{tid}\n"))
        fake = _outcome(lambda: self.fake.attach_rt_thread(rel)) if fifo else "ok"
        self.outcomes.append((f"thread {'FIFO ' if fifo else ''}into {rel}", real, fake))

    def differences(self) -> list[tuple[str, str, str]]:
        return [o for o in self.outcomes if o[1] != o[2]]

    def tear_down(self) -> None:
        for rel in reversed(self.made):
            with contextlib.suppress(CgroupWriteError):
                self.real.write_runtime(rel, 0)
        for rel in reversed(self.made):
            with contextlib.suppress(OSError):
                self.real.path(rel).rmdir()


def _mirror(real: CgroupFs) -> FakeCgroupFs:
    """A fake laid out like the real tree: the root's groups and the parent's, with their runtimes."""
    fake = FakeCgroupFs(root_runtime=real.read_runtime("/"), root_period=real.read_period("/"))
    for level in ("/", PARENT):
        for child in real.children(level):
            rel = f"{level.rstrip('/')}/{child.name}"
            fake.ensure(rel)
            fake.groups[rel].runtime = child.runtime_us
            fake.groups[rel].period = child.period_us
    return fake


@pytest.fixture
def both() -> Iterator[tuple[Both, int, str]]:
    host = detect_host()
    if host.mode != "per-group":
        pytest.skip("needs per-group real-time budgets")
    real = CgroupFs(host.cpu_root)
    with host_lock(Path(os.environ.get("DOCKER_XMS_LOCK", str(DEFAULT_LOCK)))):
        real.ensure(PARENT)
        fake = _mirror(real)
        room = real.read_runtime(PARENT) - sum(c.runtime_us for c in real.children(PARENT))
        pair = Both(real, fake)
        group = f"{PARENT}/docker-xms-fake-check-{os.getpid()}"
        try:
            pair.mkdir(group)
            yield pair, room, group
        finally:
            pair.tear_down()
    assert not real.exists(group)


def test_writes_around_the_parents_room_have_the_same_outcome_on_the_kernel_and_the_fake(
    both: tuple[Both, int, str],
) -> None:
    pair, room, group = both
    a, b = f"{group}/a", f"{group}/b"
    pair.write(group, room + 1)  # more than the parent has left
    pair.write(group, PERIOD + 1)  # more than the period
    pair.write(group, -1)  # unlimited: more than the global limit
    pair.write(group, room)
    pair.mkdir(a)
    pair.write(a, room + 1)  # more than its parent holds
    pair.write(a, room)
    pair.write(group, max(room - 1, 0))  # the parent below its child
    pair.mkdir(b)
    pair.write(b, 1)  # the children together above the parent
    pair.write(a, room // 2)
    pair.write(b, room - room // 2)
    pair.write(b, room - room // 2 + 1)
    pair.write(group, room // 2)  # below the two children together
    pair.write(a, 0)
    pair.write(b, 0)
    pair.write(group, 0)

    assert pair.differences() == []
    outcomes = [o[1] for o in pair.outcomes]
    assert "EINVAL" in outcomes
    assert "ok" in outcomes


def test_a_group_running_real_time_threads_cannot_go_to_0_and_takes_none_at_0(both: tuple[Both, int, str]) -> None:
    pair, room, group = both
    if room < 2:
        pytest.skip(f"the engine's parent has {room} us left; a real-time thread needs some")
    a, b = f"{group}/a", f"{group}/b"
    stop = threading.Event()
    ready = threading.Event()
    tids: list[int] = []

    def idle() -> None:
        tids.append(threading.get_native_id())
        ready.set()
        stop.wait()

    thread = threading.Thread(target=idle)
    thread.start()
    ready.wait()
    tid = tids[0]
    home = f"{CPU}{_cpu_cgroup(tid)}"
    try:
        pair.write(group, room)
        pair.mkdir(a)
        pair.mkdir(b)
        pair.write(a, room)
        pair.attach(a, tid, fifo=False)
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(1))
        pair.fake.attach_rt_thread(a)
        pair.write(a, 0)  # busy: it runs a real-time thread
        pair.attach(b, tid, fifo=True)  # b holds 0: no real-time thread may join it
        pair.write(a, room)
    finally:
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        Path(home, "tasks").write_text(f"{tid}\n")
        pair.fake.detach_rt_threads(a)
        stop.set()
        thread.join()

    assert pair.differences() == []
    assert [o[1] for o in pair.outcomes] == ["ok", "ok", "ok", "EBUSY", "EINVAL", "ok"]


def test_a_removed_groups_runtime_is_free_a_moment_later_and_the_rebalance_write_waits_for_it(
    both: tuple[Both, int, str],
) -> None:
    """As `rm` does: a container's process ends, its group is removed, and the room it held is at once
    given to another. The kernel frees a removed group after an RCU grace period, so that write can be
    refused for a moment; the rebalance's write tries again until it is accepted."""
    pair, room, group = both
    if room < 2:
        pytest.skip(f"the engine's parent has {room} us left; the two groups need some")
    a, b = f"{group}/a", f"{group}/b"
    pair.write(group, room)
    pair.mkdir(a)
    pair.mkdir(b)
    pair.write(a, room // 2)
    pair.write(b, room - room // 2)
    worker = subprocess.Popen(["sleep", "30"])
    try:
        (pair.real.path(b) / "cgroup.procs").write_text(f"{worker.pid}\n")
    finally:
        worker.kill()
        worker.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            pair.real.path(b).rmdir()  # busy until the killed process has left the group
            break
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.001)
    pair.fake.linger = 1
    pair.fake.rmdir(b)

    at_once = _outcome(lambda: pair.real.write_runtime(a, room))
    fake_at_once = _outcome(lambda: pair.fake.write_runtime(a, room))
    t0 = time.monotonic()
    rt_module._write_group(cast(rt_module.RtHost, SimpleNamespace(fs=pair.real)), a, room)
    waited = time.monotonic() - t0
    print(
        f"the freed room given at once: {at_once} (the fake: {fake_at_once}); then accepted after {waited * 1000:.1f} ms"
    )

    assert fake_at_once == "EINVAL"
    assert at_once in ("EINVAL", "ok")
    assert pair.real.read_runtime(a) == room
    assert waited < rt_module.RELEASE_WAIT_S


def _cpu_cgroup(tid: int) -> str:
    for line in Path(f"/proc/self/task/{tid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return "/"
