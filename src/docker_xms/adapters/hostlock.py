"""One host-wide lock, so two docker-xms processes (commands or the agent) never interleave writes."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from docker_xms.errors import XmsError


@contextmanager
def host_lock(path: Path, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive flock; the kernel drops it if the process dies, so it cannot go stale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise XmsError(
                        f"Another docker-xms process has held {path} for {timeout:.0f} s; try again later."
                    ) from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
