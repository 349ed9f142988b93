"""Helpers shared by the benchmark sections: timing, the CLI, cleanup, process memory, raw results."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLI = str(Path(sys.executable).parent / "docker-xms")
IMAGE = os.environ.get("DOCKER_XMS_RTPENGINE_IMAGE", "docker-xms/rtpengine:latest")
PREFIX = "bench-"
# The README's demo container (`scripts/quickstart.sh demo`): a managed 1:1 server that holds a share of the pool.
DEMO = "docker-xms-demo"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker-xms {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    return statistics.median(timed(fn) for _ in range(runs)) * 1000


def client() -> docker.DockerClient:
    # Publishing a thousand ports keeps the engine busy for minutes before it answers.
    return docker.from_env(version="auto", timeout=900)


def proxy_processes() -> tuple[int, int]:
    """Count of docker-proxy processes and their total resident memory in bytes."""
    from docker_xms.adapters.hostproc import pids_named

    count = rss = 0
    for pid in pids_named("docker-proxy"):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        count += 1
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
    return count, rss


def results_path(started: time.struct_time, sections: list[str], directory: Path = RESULTS) -> Path:
    """Where a run's raw results go: dated (UTC) and named after its sections, never over an earlier run's file."""
    stamp = time.strftime("%Y-%m-%dT%H%M", started)
    stem = f"{stamp}-{'-'.join(sections)}"
    path = directory / f"{stem}.json"
    again = 2
    while path.exists():
        path = directory / f"{stem}-{again}.json"
        again += 1
    return path


def save(results: dict[str, Any], path: Path) -> Path:
    """The raw results, kept in the repository so that every figure quoted from a run can be traced to its file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return path


@contextlib.contextmanager
def demo_paused() -> Iterator[dict[str, Any]]:
    """Stop the README's demo for the run when it runs, and start it again afterwards whatever happened.

    Running, it holds a share of the real-time pool and its media ports: every budget measured beside it would be
    smaller than on a host that runs only the benchmark. `docker-xms start` gives it its share and rules back.
    """
    from docker_xms.domain.labels import MANAGED_LABEL

    found = [
        s
        for s in client().api.containers(filters={"name": DEMO, "label": f"{MANAGED_LABEL}=true"})
        if (s.get("Names") or ["/"])[0] == f"/{DEMO}"
    ]
    state: dict[str, Any] = {"paused": [], "restarted": True}
    if not found:
        yield state
        return
    cli("stop", DEMO)
    state["paused"] = [DEMO]
    print(f"stopped {DEMO} for the run; it is started again at the end")
    try:
        yield state
    finally:
        proc = cli("start", DEMO, check=False)
        if proc.returncode != 0:
            state["restarted"] = False
            print(f"could not start {DEMO} again: {proc.stderr.strip()}", file=sys.stderr)
        else:
            print(f"started {DEMO} again")


Plan = TypeVar("Plan")


def plan_from_setting(setting: str | None, default: Plan, variable: str) -> Plan:
    """A section's plan from its environment variable: "key=N,key=N", any of the plan's fields, each above 0."""
    if not setting:
        return default
    kinds = {f.name: type(getattr(default, f.name)) for f in dataclasses.fields(default)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for part in setting.split(","):
        key, _, value = part.strip().partition("=")
        try:
            values[key] = kinds[key](value) if key in kinds and value else None
        except ValueError:
            values[key] = None
        if values[key] is None:
            raise ValueError(f"{variable}: {part.strip()!r} is not one of {', '.join(f'{k}=N' for k in kinds)}")
        if values[key] <= 0:
            raise ValueError(f"{variable}: {key} must be more than 0")
    return dataclasses.replace(default, **values)  # type: ignore[type-var]
