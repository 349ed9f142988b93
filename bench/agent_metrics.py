"""Benchmark section agent-metrics: the agent's CPU cost with --metrics on, scraped like Prometheus would.

N managed containers run; the same agent command line runs twice for the same time, without --metrics and
with it and a scrape every SCRAPE_S seconds, and each time the agent process's own CPU time (user + system,
from /proc/PID/stat) is counted over the window, after its start-up and first reconciliation are done.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.containers import remove_bench_containers, start_numbered

SCRAPE_S = 15.0
WINDOW_S = 60.0
SETTLE_S = 5.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line; fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _measure(metrics: bool, lock: Path) -> dict[str, Any]:
    port = _free_port()
    argv = [sys.executable, "-m", "docker_xms", "agent", "--interval", "30"]
    argv += ["--metrics", str(port)] if metrics else []
    env = {**os.environ, "DOCKER_XMS_AGENT_LOCK": str(lock)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        time.sleep(SETTLE_S)
        before, started = _cpu_seconds(proc.pid), time.monotonic()
        scrapes: list[float] = []
        size = 0
        while (elapsed := time.monotonic() - started) < WINDOW_S:
            if metrics and elapsed >= len(scrapes) * SCRAPE_S:
                t = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
                    size = len(answer.read())
                scrapes.append((time.perf_counter() - t) * 1000)
            time.sleep(0.2)
        cpu = _cpu_seconds(proc.pid) - before
        wall = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {
        "metrics": metrics,
        "cpu_s": round(cpu, 3),
        "window_s": round(wall, 1),
        "cpu_percent_of_one": round(100 * cpu / wall, 3),
        "scrapes": len(scrapes),
        "scrape_ms": [round(s, 1) for s in scrapes],
        "metrics_bytes": size,
    }


def agent_metrics(n: int = 20) -> dict[str, Any]:
    """The agent's CPU over WINDOW_S with N managed containers, without and with --metrics scraped each SCRAPE_S."""
    remove_bench_containers()
    try:
        start_numbered(n)
        time.sleep(10)  # the containers' systemd and servers start up before anything is counted
        with tempfile.TemporaryDirectory() as tmp:
            without = _measure(False, Path(tmp) / "agent.lock")
            with_metrics = _measure(True, Path(tmp) / "agent.lock")
        extra = with_metrics["cpu_percent_of_one"] - without["cpu_percent_of_one"]
        print(
            f"agent on {n} containers over {WINDOW_S:.0f} s: {without['cpu_percent_of_one']:.3f}% of one CPU "
            f"without metrics, {with_metrics['cpu_percent_of_one']:.3f}% with a scrape every {SCRAPE_S:.0f} s "
            f"({extra:+.3f}%); scrape {max(with_metrics['scrape_ms'], default=0):.0f} ms at most, "
            f"{with_metrics['metrics_bytes']} bytes"
        )
        return {
            "containers": n,
            "scrape_interval_s": SCRAPE_S,
            "without": without,
            "with": with_metrics,
            "extra_percent_of_one": round(extra, 3),
            "target_percent_of_one": 1.0,
        }
    finally:
        remove_bench_containers()
