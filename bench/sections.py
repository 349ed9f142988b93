"""Benchmark sections that need only the engine and the kernel: rebalance, ps, port strategies."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from bench.common import IMAGE, PREFIX, cli, client, median_ms, proxy_processes, timed
from bench.containers import remove_bench_containers, start_numbered


def rebalance(counts: tuple[int, ...] = (1, 8, 32)) -> dict[str, Any]:
    """Time for one rebalance that has to move every budget, for N managed containers."""
    from docker_xms.adapters.config import load_settings
    from docker_xms.adapters.engine import Engine
    from docker_xms.usecases.rt import open_host
    from docker_xms.usecases.rt import rebalance as do_rebalance

    remove_bench_containers()
    settings = load_settings()
    engine = Engine.connect(host=settings.docker_host)
    rt = open_host(engine, settings)
    out: dict[str, Any] = {}
    running = 0
    try:
        for n in counts:
            start_numbered(n - running, running)
            running = n
            ids = [
                c.id
                for c in client().containers.list(filters={"label": "io.docker-xms.managed=true"})
                if c.name.startswith(PREFIX)
            ]
            samples = []
            for _ in range(5):
                # Upset one budget so that the rebalance has real writes to make (in a container that runs:
                # one may have stopped since the list was taken, and its cgroup is gone).
                path = next(p for p in (rt.fs.path(rt.cgroup_of(i)) / "cpu.rt_runtime_us" for i in ids) if p.exists())
                path.write_text(str(max(1000, int(path.read_text()) // 2)))
                samples.append(timed(lambda: do_rebalance(rt)) * 1000)
            no_op = median_ms(lambda: do_rebalance(rt), 5)
            samples.sort()
            out[str(n)] = {"mend_ms_median": samples[len(samples) // 2], "noop_ms_median": no_op}
            print(
                f"rebalance N={n:>2}: {samples[len(samples) // 2]:7.1f} ms with writes, {no_op:7.1f} ms when "
                "nothing changes"
            )
    finally:
        remove_bench_containers()
    return out


def ps(n: int = 20, runs: int = 10) -> dict[str, Any]:
    """`docker-xms ps` against `docker ps` on N managed containers, end to end as a user runs them."""
    remove_bench_containers()
    try:
        start_numbered(n)
        xms = median_ms(lambda: cli("ps", "--json"), runs)
        xms_table = median_ms(lambda: cli("ps"), runs)
        plain = median_ms(lambda: subprocess.run(["docker", "ps"], capture_output=True, check=True), runs)
        print(
            f"ps on {n} containers: docker-xms ps --json {xms:.0f} ms, docker-xms ps {xms_table:.0f} ms, "
            f"docker ps {plain:.0f} ms ({xms_table / plain:.2f}x)"
        )
        return {
            "containers": n,
            "docker_xms_ps_json_ms": xms,
            "docker_xms_ps_ms": xms_table,
            "docker_ps_ms": plain,
            "ratio": xms_table / plain,
        }
    finally:
        remove_bench_containers()


def _plain_publish(ports: int) -> dict[str, Any]:
    c = client()
    start = 40000
    spec = {f"{p}/udp": p for p in range(start, start + ports)}
    before = proxy_processes()
    began = time.perf_counter()
    container = c.containers.run(IMAGE, ["sleep", "600"], detach=True, name=f"{PREFIX}plain-{ports}", ports=spec)
    elapsed = time.perf_counter() - began
    count, rss = proxy_processes()
    container.remove(force=True)
    return {"ports": ports, "start_s": elapsed, "proxies": count - before[0], "proxy_rss_mb": (rss - before[1]) / 2**20}


def ports() -> dict[str, Any]:
    """Start time and extra processes for XMS's full port set: docker-xms (dnat, host) against `docker run -p`."""
    from docker_xms.adapters.profile_store import load_profile

    full = load_profile("xms").media_port_count + len(load_profile("xms").ports)
    remove_bench_containers()
    out: dict[str, Any] = {"xms_ports": full}
    for strategy in ("dnat", "host"):
        before = proxy_processes()
        began = time.perf_counter()
        cli(
            "run",
            "--profile",
            "xms",
            "-i",
            IMAGE,
            "--ports",
            strategy,
            "--no-wait",
            "--name",
            f"{PREFIX}{strategy}",
            "--json",
        )
        elapsed = time.perf_counter() - began
        count, rss = proxy_processes()
        cli("rm", "-f", f"{PREFIX}{strategy}")
        out[strategy] = {"start_s": elapsed, "proxies": count - before[0], "proxy_rss_mb": (rss - before[1]) / 2**20}
        print(
            f"docker-xms --ports {strategy}: {full} ports ready in {elapsed:.2f} s with "
            f"{count - before[0]} extra processes"
        )
    plain = [_plain_publish(n) for n in (100, 500, 1000)]
    for row in plain:
        print(
            f"docker run -p, {row['ports']:>4} UDP ports: {row['start_s']:6.1f} s, {row['proxies']} docker-proxy "
            f"processes, {row['proxy_rss_mb']:.0f} MB"
        )
    # Time and processes grow with the port count: extrapolate linearly from the largest two measurements.
    a, b = plain[-2], plain[-1]
    slope = (b["start_s"] - a["start_s"]) / (b["ports"] - a["ports"])
    estimate = b["start_s"] + slope * (full - b["ports"])
    per_port_mb = b["proxy_rss_mb"] / b["ports"]
    out["plain"] = plain
    out["plain_extrapolated"] = {
        "ports": full,
        "start_s": estimate,
        "proxies": 2 * full,
        "proxy_rss_mb": per_port_mb * full,
    }
    print(
        f"docker run -p, {full} ports (extrapolated): {estimate:.0f} s, about {2 * full} docker-proxy processes, "
        f"{per_port_mb * full:.0f} MB"
    )
    remove_bench_containers()
    return out
