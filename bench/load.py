"""Load put on the machine while something is measured: stress-ng on the host or inside containers' cpu cgroups."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def host_load(cpus: int = 8, limit_s: float = 600, cgroups: tuple[Path, ...] = ()) -> Iterator[str]:
    """stress-ng --cpu N for the duration of the block; killed (its whole group) afterwards.

    With `cgroups`, one stress-ng per cgroup directory, each with N workers, started inside that cpu cgroup (the
    process writes itself into cgroup.procs before it runs stress-ng, so that every worker is born there).
    """
    cmd = ["stress-ng", "--cpu", str(cpus), "--timeout", f"{int(limit_s)}s", "--quiet"]
    procs = [
        subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=(lambda d=directory: (d / "cgroup.procs").write_text(str(os.getpid()))),  # noqa: PLW1509
        )
        for directory in cgroups
    ] or [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        time.sleep(1.5)  # let the hogs start and spread over the CPUs
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"stress-ng exited at once (code {proc.returncode})")
        yield " ".join(cmd[:3])
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
