"""Run the benchmark sections named on the command line (default: all) and save their numbers."""

from __future__ import annotations

import platform
import sys
import time
from typing import Any

from bench import sections
from bench.common import save
from bench.latency import latency
from bench.media import media
from bench.report import headlines, write_report

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
    results: dict[str, Any] = {
        "machine": {
            "kernel": platform.release(),
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
        },
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for name in chosen:
        print(f"== {name}")
        results[name] = SECTIONS[name]()
    print(f"results: {save(results)}")
    print(f"report: {write_report(results)}")
    for line in headlines(results):
        print(line)
    return 0


sys.exit(main(sys.argv[1:]))
