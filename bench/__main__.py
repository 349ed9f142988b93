"""Run the benchmark sections named on the command line (default: all) and save their numbers.

The raw results go to bench/results/<UTC date and time>-<sections>.json, kept in the repository, and the report
(bench/results/report.md with its plots, not kept: `python -m bench report <file>` makes it again) names that file.
The README's demo container, when it runs, is stopped for the run and started again at the end.

For the whole run the CPU wake-up latency limit is held at BENCH_CPU_LATENCY_US (default 0, as
`docker-xms agent --cpu-latency-us 0` holds it; "none" holds nothing). It is host-wide: it applies to the
floor, managed and unmanaged alike, and the report says what was held.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import sections
from bench.agent_metrics import agent_metrics
from bench.calls import calls
from bench.common import demo_paused, results_path, save
from bench.house import house
from bench.latency import latency
from bench.media import media
from bench.report import headlines, write_report
from bench.swarm_ports import swarm_ports
from bench.webrtc import webrtc_calls
from docker_xms.adapters.pmqos import CpuLatencyHold, read_idle_state

SECTIONS = {
    "rebalance": sections.rebalance,
    "ps": sections.ps,
    "ports": sections.ports,
    "latency": latency,
    "media": media,
    "house": house,
    "calls": calls,
    "webrtc": webrtc_calls,
    "agent-metrics": agent_metrics,
    "swarm-ports": swarm_ports,
}


def report_only(files: list[str]) -> int:
    """The report again, from a run's raw results file."""
    if len(files) != 1 or not os.path.isfile(files[0]):
        print("usage: python -m bench report bench/results/<run>.json", file=sys.stderr)
        return 2
    raw = Path(files[0])
    results = json.loads(raw.read_text())
    print(f"report: {write_report(results, raw)}")
    for line in headlines(results):
        print(line)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["report"]:
        return report_only(argv[1:])
    chosen = argv or list(SECTIONS)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        print(f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    setting = os.environ.get("BENCH_CPU_LATENCY_US", "0")
    hold_us = None if setting == "none" else int(setting)
    results: dict[str, Any] = {
        "machine": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "cpuidle_driver": read_idle_state().driver,
            "cpu_latency_held_us": hold_us,
        },
    }
    started = time.gmtime()
    results["started"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", started)
    raw = results_path(started, chosen if chosen != list(SECTIONS) else ["all"])
    with contextlib.ExitStack() as stack:
        demo = stack.enter_context(demo_paused())
        results["paused"] = demo["paused"]
        stack.enter_context(CpuLatencyHold(hold_us) if hold_us is not None else contextlib.nullcontext())
        for name in chosen:
            print(f"== {name}")
            results[name] = SECTIONS[name]()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"results: {save(results, raw)}")
    print(f"report: {write_report(results, raw)}")
    for line in headlines(results):
        print(line)
    return 0 if demo["restarted"] else 1


sys.exit(main(sys.argv[1:]))
