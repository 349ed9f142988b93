"""`ps` and `rebalance` at engine speed, and the command line's start-up, side by side in one run.

Every command pair is timed in alternation (docker-xms, then docker, run after run), so that a busy
moment of the host costs both alike; the median of each is reported. The Python interpreter's own
start-up, and what importing the Docker SDK alone costs, are measured beside them: they are the floor.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import CLI, client, timed
from bench.containers import remove_bench_containers, start_numbered

RUNS = 15
# Its own prefix: another section's bench- containers may run beside it and are not this section's to remove.
PREFIX = "house-"


def _paired(commands: dict[str, list[str]], runs: int = RUNS) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in commands}
    env = {"COLUMNS": "200", "PATH": "/usr/local/bin:/usr/bin:/bin"}
    for _ in range(runs):
        for name, argv in commands.items():
            samples[name].append(
                timed(lambda argv=argv: subprocess.run(argv, capture_output=True, check=True, env=env))
            )
    return {name: statistics.median(values) * 1000 for name, values in samples.items()}


def _rebalance_ms(n: int) -> tuple[float, float]:
    from docker_xms.adapters.config import load_settings
    from docker_xms.adapters.engine import Engine
    from docker_xms.usecases.rt import open_host, rebalance

    settings = load_settings()
    rt = open_host(Engine.connect(host=settings.docker_host), settings)
    ids = [
        c.id
        for c in client().containers.list(filters={"label": "io.docker-xms.managed=true"})
        if c.name.startswith(PREFIX)
    ]
    # A --no-wait start may still be booting, or have stopped: the count that ran is reported with the time.
    print(f"rebalance over {len(ids)} running managed containers ({n} started)")
    mend = []
    for _ in range(RUNS):
        # Halve one budget so that the rebalance has writes to make: that one grows, the parent settles.
        path = next(p for p in (rt.fs.path(rt.cgroup_of(i)) / "cpu.rt_runtime_us" for i in ids) if p.exists())
        path.write_text(str(max(1000, int(path.read_text()) // 2)))
        mend.append(timed(lambda: rebalance(rt)) * 1000)
    noop = statistics.median(timed(lambda: rebalance(rt)) * 1000 for _ in range(RUNS))
    return statistics.median(mend), noop


def house(ps_containers: int = 20, rebalance_containers: int = 32) -> dict[str, Any]:
    python = sys.executable
    floor = _paired({"python -c pass": [python, "-c", "pass"], "import docker": [python, "-c", "import docker"]})
    help_ms = _paired({"docker-xms --help": [CLI, "--help"], "docker --help": ["docker", "--help"]})
    remove_bench_containers(PREFIX)
    inotify = Path("/proc/sys/fs/inotify/max_user_instances")
    instances = int(inotify.read_text())
    # Each systemd container takes a few inotify instances of root's 128 by default: past about 20
    # containers the next ones cannot boot. Raised for the run, given back after.
    if instances < 1024:
        inotify.write_text("1024\n")
    try:
        start_numbered(ps_containers, prefix=PREFIX)
        ps = _paired(
            {"docker-xms ps --json": [CLI, "ps", "--json"], "docker ps": ["docker", "ps"], "docker-xms ps": [CLI, "ps"]}
        )
        start_numbered(rebalance_containers - ps_containers, ps_containers, PREFIX)
        mend, noop = _rebalance_ms(rebalance_containers)
    finally:
        remove_bench_containers(PREFIX)
        inotify.write_text(f"{instances}\n")
    rows = [
        ("python -c pass (floor)", floor["python -c pass"], ""),
        ("python -c 'import docker'", floor["import docker"], ""),
        ("docker-xms --help", help_ms["docker-xms --help"], "target <= 80 ms"),
        ("docker --help", help_ms["docker --help"], ""),
        (
            f"docker-xms ps --json, {ps_containers} containers",
            ps["docker-xms ps --json"],
            f"{ps['docker-xms ps --json'] / ps['docker ps']:.2f}x docker ps, target <= 3x",
        ),
        (
            f"docker-xms ps (table), {ps_containers} containers",
            ps["docker-xms ps"],
            f"{ps['docker-xms ps'] / ps['docker ps']:.2f}x docker ps",
        ),
        (f"docker ps, {ps_containers} containers", ps["docker ps"], ""),
        (f"rebalance N={rebalance_containers} with writes", mend, "target <= 40 ms"),
        (f"rebalance N={rebalance_containers}, nothing to change", noop, ""),
    ]
    for label, ms, note in rows:
        print(f"{label:<42} {ms:8.1f} ms  {note}")
    return {
        "runs": RUNS,
        "floor_ms": floor,
        "help_ms": help_ms,
        "ps_ms": ps,
        "rebalance_ms": {"containers": rebalance_containers, "with_writes": mend, "no_op": noop},
    }


if __name__ == "__main__":
    house(*(int(a) for a in sys.argv[1:]))
