"""One host-wide lock, so two docker-xms processes (commands or the agent) never interleave writes."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from docker_xms.errors import XmsError


@contextmanager
def host_lock(path: Path, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive flock, taken in the order the waiters came; the kernel drops it if the process dies,
    so it cannot go stale.

    A bare flock is a race among waiters: under steady contention one process (the agent, say) can lose it
    again and again until it gives up. So every waiter first takes a ticket in a queue beside the lock and
    tries the lock only when no live ticket older than its own is left.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with _ticket(path.with_name(path.name + ".queue")) as first_in_line:
            deadline = time.monotonic() + timeout
            while not (first_in_line() and _try_flock(fd)):
                if time.monotonic() >= deadline:
                    raise XmsError(f"Another docker-xms process has held {path} for {timeout:.0f} s; try again later.")
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _try_flock(fd: int, how: int = fcntl.LOCK_EX) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def _ticket(queue: Path) -> Iterator[Callable[[], bool]]:
    """A ticket in `queue`: a file named by the time it was taken, flocked by its holder for as long as it waits.

    The ticket is flocked under a name of its own and then renamed into line, so nobody sees it unheld. A
    ticket whose file nobody holds belongs to a process that died while it waited, and is taken out of line.
    """
    queue.mkdir(mode=0o700, exist_ok=True)
    name = f"{time.monotonic_ns():020d}-{os.getpid()}-{threading.get_ident()}"
    draft = queue / f".{name}"
    fd = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(draft, queue / name)

    def first_in_line() -> bool:
        for other in sorted(e for e in os.listdir(queue) if not e.startswith(".") and e < name):
            if not _abandoned(queue / other):
                return False
        return True

    try:
        yield first_in_line
    finally:
        (queue / name).unlink(missing_ok=True)
        os.close(fd)


def _abandoned(ticket: Path) -> bool:
    """True (and the ticket removed) when no process holds it; a ticket gone meanwhile is abandoned too."""
    try:
        fd = os.open(ticket, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        if not _try_flock(fd, fcntl.LOCK_SH):
            return False
        ticket.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def try_hold(path: Path) -> int | None:
    """Take the flock without waiting and keep it until this process ends; None if another process holds it.

    The holder writes its pid into the file, so that whoever finds the lock taken can say by whom.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def holder(path: Path) -> int | None:
    """The pid of the process that holds the flock (0 if it wrote none), or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
