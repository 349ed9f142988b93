"""Run the benchmark sections named on the command line (default: all) and save their numbers.

For the whole run the CPU wake-up latency limit is held at BENCH_CPU_LATENCY_US (default 0, as
`docker-xms agent --cpu-latency-us 0` holds it; "none" holds nothing). It is host-wide: it applies to the
floor, managed and unmanaged alike, and the report says what was held.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from typing import Any

from bench import sections
from bench.common import save
from bench.latency import latency
from bench.media import media
from bench.report import headlines, write_report
from docker_xms.adapters.pmqos import CpuLatencyHold, read_idle_state

SECTIONS = {
    "rebalance": sections.rebalance,
    "ps": sections.ps,
    "ports": sections.ports,
    "latency": latency,
    "media": media,
}


def main(argv: list[str]) -> int:
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
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with CpuLatencyHold(hold_us) if hold_us is not None else contextlib.nullcontext():
        for name in chosen:
            print(f"== {name}")
            results[name] = SECTIONS[name]()
    print(f"results: {save(results)}")
    print(f"report: {write_report(results)}")
    for line in headlines(results):
        print(line)
    return 0


sys.exit(main(sys.argv[1:]))
