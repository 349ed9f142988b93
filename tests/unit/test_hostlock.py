"""The host lock with real processes and real flocks: taken in the order the waiters came, never stuck behind a
waiter that died, and a timeout that leaves nothing in line."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from docker_xms.adapters.hostlock import host_lock
from docker_xms.errors import XmsError

FORK = multiprocessing.get_context("fork")


def _take(lock: Path, log: Path, who: str, hold: float) -> None:
    with host_lock(lock, timeout=20):
        with log.open("a") as f:
            f.write(f"{who} {time.monotonic()}\n")
        time.sleep(hold)


def _order(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()]


def _queued(lock: Path) -> list[str]:
    queue = lock.with_name(lock.name + ".queue")
    return sorted(e for e in os.listdir(queue) if not e.startswith(".")) if queue.exists() else []


def _wait_in_line(lock: Path, waiter: multiprocessing.process.BaseProcess) -> None:
    deadline = time.monotonic() + 10
    while not any(ticket.split("-")[1] == str(waiter.pid) for ticket in _queued(lock)):
        assert time.monotonic() < deadline, f"process {waiter.pid} never got in line: {_queued(lock)}"
        time.sleep(0.01)


def test_waiters_get_the_lock_in_the_order_they_came(tmp_path: Path) -> None:
    lock, log = tmp_path / "host.lock", tmp_path / "order"
    waiters = []
    with host_lock(lock):
        for i in range(5):
            p = FORK.Process(target=_take, args=(lock, log, str(i), 0.02))
            p.start()
            waiters.append(p)
            _wait_in_line(lock, p)
    for p in waiters:
        p.join(20)
        assert p.exitcode == 0
    assert _order(log) == ["0", "1", "2", "3", "4"]
    assert _queued(lock) == []


def test_a_steady_stream_of_takers_does_not_starve_a_late_one(tmp_path: Path) -> None:
    """Six processes take the lock back to back for 1 s; one that comes later still gets it in its turn."""
    lock, log = tmp_path / "host.lock", tmp_path / "order"

    def churn(who: str) -> None:
        end = time.monotonic() + 1
        while time.monotonic() < end:
            _take(lock, log, who, 0.005)

    busy = [FORK.Process(target=churn, args=(f"busy{i}",)) for i in range(6)]
    for p in busy:
        p.start()
    time.sleep(0.3)
    came = time.monotonic()
    late = FORK.Process(target=_take, args=(lock, log, "late", 0))
    late.start()
    late.join(20)
    for p in busy:
        p.join(20)
    assert late.exitcode == 0
    taken = [line.split() for line in log.read_text().splitlines()]
    ahead = [who for who, at in taken[: [who for who, _ in taken].index("late")] if float(at) > came]
    # Behind at most one ticket per busy process and the holder; a bare flock race lets them go again and again.
    assert len(ahead) <= len(busy) + 1, ahead
    assert any(who != "late" and float(at) > came for who, at in taken[[who for who, _ in taken].index("late") :])


def test_a_waiter_that_died_in_line_does_not_hold_up_the_others(tmp_path: Path) -> None:
    lock, log = tmp_path / "host.lock", tmp_path / "order"
    with host_lock(lock):
        dead = FORK.Process(target=_take, args=(lock, log, "dead", 0))
        dead.start()
        _wait_in_line(lock, dead)
        os.kill(dead.pid or 0, signal.SIGKILL)
        dead.join(5)
        alive = FORK.Process(target=_take, args=(lock, log, "alive", 0))
        alive.start()
        _wait_in_line(lock, alive)
    alive.join(10)
    assert alive.exitcode == 0
    assert _order(log) == ["alive"]
    assert _queued(lock) == []


def test_a_timeout_says_so_in_one_sentence_and_leaves_no_ticket(tmp_path: Path) -> None:
    lock = tmp_path / "host.lock"
    with host_lock(lock):
        refused = r"^Another docker-xms process has held .* for 0 s; try again later\.$"
        with pytest.raises(XmsError, match=refused), host_lock(lock, timeout=0.2):
            pass
        assert _queued(lock) == []
