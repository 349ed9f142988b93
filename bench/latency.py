"""Wake-up latency in docker-xms containers against the same image under plain `docker run`, idle and loaded.

Managed containers get a real-time budget from docker-xms, so the probe runs at SCHED_FIFO 80. In a plain
container the kernel refuses SCHED_FIFO (no budget in its cgroup), so the probe runs at SCHED_OTHER: that is what an
unmanaged media server gets on this host. Probes run concurrently in all N containers of a measurement.

The probe is docker-xms's own static wake-up probe (the one `measure_wakeups` runs when the image has no
cyclictest); it is run here with its raw output so that samples of several containers can be pooled and plotted.
Percentiles use the same nearest-rank code as `measure_wakeups`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import IMAGE, cli, client

LAT_PREFIX = "bench-lat-"
CPU_PARENT = Path("/sys/fs/cgroup/cpu/docker")
FIFO_PRIORITY = 80
# Log-spaced histogram bins for the plots: 0..1 us, then 10 bins per decade up to 1 s.
BIN_EDGES = [0.0, *[10 ** (k / 10) for k in range(61)]]


# --- shared with the media section ----------------------------------------------------------------------


@contextlib.contextmanager
def host_load(cpus: int = 8, limit_s: float = 600) -> Iterator[str]:
    """stress-ng --cpu N on the host for the duration of the block; killed (its whole group) afterwards."""
    cmd = ["stress-ng", "--cpu", str(cpus), "--timeout", f"{int(limit_s)}s", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(1.5)  # let the hogs start and spread over the CPUs
        if proc.poll() is not None:
            raise RuntimeError(f"stress-ng exited at once (code {proc.returncode})")
        yield " ".join(cmd[:3])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_managed(name: str, wait: bool = False) -> str:
    """A docker-xms container with a real-time budget; returns its id."""
    args = ["run", "-c", "--media-ports", "10", "--name", name, "--json"]
    if not wait:
        args.insert(2, "--no-wait")
    for attempt in range(5):
        proc = cli(*args, check=False)
        if proc.returncode == 0:
            return str(json.loads(proc.stdout)["id"])
        # Other users of this engine may take the media ports docker-xms picked a moment ago: try again.
        if "already allocated" not in proc.stderr or attempt == 4:
            raise RuntimeError(f"docker-xms {' '.join(args)} failed: {proc.stderr.strip()}")
        cli("rm", "-f", name, check=False)
        time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def start_unmanaged(name: str) -> str:
    """The same image under plain docker run, with the systemd mounts and SYS_NICE but no real-time budget."""
    container = client().containers.run(
        IMAGE,
        name=name,
        detach=True,
        tmpfs={"/run": "", "/run/lock": ""},
        volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"}},
        cap_add=["SYS_NICE"],
        stop_signal="SIGRTMIN+3",
    )
    return str(container.id)


def wait_booted(container_id: str, timeout_s: float = 120) -> None:
    """Until systemd in the container says running (or degraded) and rtpengine's unit is active."""
    container = client().containers.get(container_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, state = container.exec_run(["systemctl", "is-system-running"])
        _, unit = container.exec_run(["systemctl", "is-active", "rtpengine-daemon"])
        if state.decode().strip() in ("running", "degraded") and unit.decode().strip() == "active":
            return
        time.sleep(0.5)
    raise RuntimeError(f"container {container_id[:12]} did not finish booting in {timeout_s:.0f} s")


def remove(prefix: str) -> None:
    """Remove every container whose name starts with `prefix`: managed ones through docker-xms."""
    api = client().api
    # The list view only (no inspect per container): other users of the engine remove containers meanwhile.
    for summary in api.containers(all=True, filters={"name": prefix}):
        name = (summary.get("Names") or ["/"])[0].lstrip("/")
        if not name.startswith(prefix):
            continue
        if (summary.get("Labels") or {}).get("io.docker-xms.managed") == "true":
            proc = cli("rm", "-f", name, check=False)
            if proc.returncode == 0:
                continue
        with contextlib.suppress(Exception):
            api.remove_container(summary["Id"], force=True)


def rt_budget(container_id: str) -> int | None:
    try:
        return int((CPU_PARENT / container_id / "cpu.rt_runtime_us").read_text())
    except (OSError, ValueError):
        return None


def address_of(container_id: str) -> str:
    container = client().containers.get(container_id)
    return str(container.attrs["NetworkSettings"]["IPAddress"])


# --- the probe --------------------------------------------------------------------------------------------


def _probe_samples(container_id: str, priority: int, interval_us: int, duration_s: float) -> dict[str, Any]:
    from docker_xms.adapters.engine import Engine
    from docker_xms.usecases.probe import static_probe_samples

    engine = Engine.connect()
    try:
        count = max(1, round(duration_s * 1_000_000 / interval_us))
        summary, samples = static_probe_samples(engine, container_id, priority, interval_us, count)
        return {"summary": summary, "samples": samples}
    finally:
        engine.close()


def _stats(samples: list[float]) -> dict[str, Any]:
    from docker_xms.domain.media import percentiles

    p = percentiles(samples)
    return {"samples": p.count, "p50_us": p.p50, "p99_us": p.p99, "p999_us": p.p999, "max_us": p.max}


def _histogram(samples: list[float]) -> list[int]:
    counts = [0] * (len(BIN_EDGES) - 1)
    for value in samples:
        v = max(0.0, value)
        # bins: [0,1), then [10^(k/10), 10^((k+1)/10)); overflow goes into the last bin
        index = 0 if v < 1 else min(len(counts) - 1, 1 + math.floor(math.log10(v) * 10 + 1e-9))
        counts[index] += 1
    return counts


def _measure(ids: list[str], priority: int, interval_us: int, duration_s: float) -> dict[str, Any]:
    results: list[dict[str, Any] | BaseException | None] = [None] * len(ids)

    def run(i: int) -> None:
        try:
            results[i] = _probe_samples(ids[i], priority, interval_us, duration_s)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_container = []
    pooled: list[float] = []
    for cid, res in zip(ids, results, strict=True):
        if isinstance(res, BaseException) or res is None:
            raise RuntimeError(f"probe in {cid[:12]}: {res}")
        samples = res["samples"]
        pooled.extend(samples)
        summary = res["summary"]
        per_container.append(
            {
                "container": cid[:12],
                "policy": str(summary.get("policy", "")),
                "priority": int(str(summary.get("priority", 0))),
                "mlocked": bool(summary.get("mlocked")),
                "budget_us": rt_budget(cid),
                **_stats(samples),
            }
        )
    return {"containers": per_container, "pooled": _stats(pooled), "histogram": _histogram(pooled)}


def _fifo_refused(container_id: str) -> str:
    """Show with measure_wakeups that SCHED_FIFO is refused in a container without a budget."""
    from docker_xms.adapters.engine import Engine
    from docker_xms.usecases.probe import SchedulingRefused, measure_wakeups

    engine = Engine.connect()
    try:
        measure_wakeups(engine, container_id, priority=FIFO_PRIORITY, interval_us=1000, duration_s=0.05)
    except SchedulingRefused as exc:
        return str(exc)
    finally:
        engine.close()
    return ""


def latency(
    duration_s: float = 10.0, interval_us: int = 1000, counts: tuple[int, ...] = (1, 2, 4), hogs: int = 8
) -> dict[str, Any]:
    """Wake-up lateness, managed (SCHED_FIFO 80 + budget) against unmanaged (SCHED_OTHER), idle and loaded."""
    out: dict[str, Any] = {
        "duration_s": duration_s,
        "interval_us": interval_us,
        "load": f"stress-ng --cpu {hogs} on the host",
        "bin_edges_us": BIN_EDGES,
        "runs": [],
    }
    remove(LAT_PREFIX)
    try:
        for n in counts:
            for kind in ("managed", "unmanaged"):
                ids = []
                for i in range(n):
                    name = f"{LAT_PREFIX}{kind[0]}{n}-{i}"
                    ids.append(start_managed(name, wait=True) if kind == "managed" else start_unmanaged(name))
                if kind == "managed":
                    cli("rt", "rebalance", check=False)
                # Measure servers that have booted, not the boot: systemd, mounts and rtpengine's start-up
                # (it makes a DTLS certificate) are kernel and CPU work that would land in the samples.
                for cid in ids:
                    wait_booted(cid)
                time.sleep(3)
                priority = FIFO_PRIORITY if kind == "managed" else 0
                if kind == "unmanaged" and "fifo_refused" not in out:
                    out["fifo_refused"] = _fifo_refused(ids[0])
                for load in ("idle", "loaded"):
                    with contextlib.ExitStack() as stack:
                        if load == "loaded":
                            stack.enter_context(host_load(hogs, limit_s=duration_s + 60))
                        run = _measure(ids, priority, interval_us, duration_s)
                    run.update({"n": n, "kind": kind, "load": load})
                    out["runs"].append(run)
                    p = run["pooled"]
                    policy = run["containers"][0]["policy"]
                    print(
                        f"latency N={n} {kind:9} {load:6} {policy}: pooled p50 {p['p50_us']:.0f} p99 "
                        f"{p['p99_us']:.0f} p99.9 {p['p999_us']:.0f} max {p['max_us']:.0f} us "
                        f"({p['samples']} samples)"
                    )
                remove(LAT_PREFIX)
    finally:
        remove(LAT_PREFIX)
        cli("rt", "rebalance", check=False)
    return out
