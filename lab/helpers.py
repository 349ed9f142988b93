"""The installed command line run as a user runs it, the label on every container the tests and the lab make,
and waiting for a condition: what the lab's equipment and the test suite both start from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TEST_LABEL = "io.docker-xms.test"


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli_path() -> str:
    found = Path(sys.executable).parent / "docker-xms"
    return str(found) if found.exists() else (shutil.which("docker-xms") or "docker-xms")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600, input: str | None = None) -> Result:
    # No agent left running behind the suite: the tests that start one say so in `env` and stop it.
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "DOCKER_XMS_START_AGENT": "0", **(env or {})}
    proc = subprocess.run(
        [cli_path(), *args], capture_output=True, text=True, env=full_env, timeout=timeout, input=input
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
