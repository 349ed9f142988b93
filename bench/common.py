"""Helpers shared by the benchmark sections: timing, the CLI, cleanup, process memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLI = str(Path(sys.executable).parent / "docker-xms")
IMAGE = os.environ.get("DOCKER_XMS_RTPENGINE_IMAGE", "docker-xms/rtpengine:latest")
PREFIX = "bench-"


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


def remove_bench_containers() -> None:
    c = client()
    for container in c.containers.list(all=True):
        if container.name.startswith(PREFIX):
            container.remove(force=True)
    cli("rt", "rebalance", check=False)


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


def save(results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "latest.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True))
    return path
