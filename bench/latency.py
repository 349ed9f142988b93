"""Wake-up latency in docker-xms containers against the same image under plain `docker run`, idle and loaded.

Managed containers get a real-time budget from docker-xms, so the probe runs at SCHED_FIFO at the priority of the
rtpengine profile. In an unmanaged plain container the kernel refuses SCHED_FIFO (no budget in its cgroup), so the
probe runs at SCHED_OTHER: that is what an unmanaged media server gets on this host. In a hand-made one (plain
`docker run --cpu-rt-runtime` with the same budget, the parent raised by hand; see bench.baselines) the probe runs at
SCHED_FIFO at the same priority. Probes run concurrently in all N containers of a measurement.

The same probe also runs on the host, outside any container, at the same priority: the machine's own floor. On a
virtual machine the hypervisor can stop a vCPU for milliseconds whatever the guest's scheduling; no container can
do better than the floor, and the report shows it next to the containers, with the steal time of each measurement.

Each (N, load) measurement is split into rounds that rotate the order of floor, managed, unmanaged and hand-made, so
that a noisy minute on the machine lands on all of them alike.

Loads: idle; `host` = stress-ng --cpu 8 in the host's root cgroup (other work on the machine); `inside` =
stress-ng --cpu 8/N placed in each measured container's cpu cgroup (the server's own non-real-time work: codecs,
recording, logging), or in the host's root cgroup for the floor.

The probe is docker-xms's own static wake-up probe (the one `measure_wakeups` runs when the image has no
cyclictest); it is run here with its raw output so that samples of several containers can be pooled and plotted.
Percentiles use the same nearest-rank code as `measure_wakeups`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any

from bench.baselines import (
    HAND_MADE,
    UNMANAGED,
    check_like_with_like,
    create_plain,
    fair_share,
    hand_made_started,
    rotated,
    setup_of,
    start,
    template,
)
from bench.common import cli
from bench.containers import cpu_cgroups, remove, rt_budget, start_managed, wait_booted
from bench.load import host_load

LAT_PREFIX = "bench-lat-"
KINDS = ("floor", "managed", UNMANAGED, HAND_MADE)
LOADS = ("idle", "host", "inside")
# Log-spaced histogram bins for the plots: 0..1 us, then 10 bins per decade up to 1 s.
BIN_EDGES = [0.0, *[10 ** (k / 10) for k in range(61)]]


# --- the probe --------------------------------------------------------------------------------------------


def _probe_samples(container_id: str | None, priority: int, interval_us: int, duration_s: float) -> dict[str, Any]:
    """The static probe's summary and samples, in a container, or on the host itself for `None`."""
    from docker_xms.usecases.probe import host_probe_samples, static_probe_samples

    count = max(1, round(duration_s * 1_000_000 / interval_us))
    if container_id is None:
        summary, samples = host_probe_samples(priority, interval_us, count)
        return {"summary": summary, "samples": samples}

    from docker_xms.adapters.engine import Engine

    engine = Engine.connect()
    try:
        summary, samples = static_probe_samples(engine, container_id, priority, interval_us, count)
        return {"summary": summary, "samples": samples}
    finally:
        engine.close()


def _stats(samples: list[float]) -> dict[str, Any]:
    from docker_xms.domain.stats import percentiles

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


def steal_ms() -> float:
    """CPU time the hypervisor took from this machine's vCPUs so far (the steal column of /proc/stat), in ms."""
    from docker_xms.adapters.cgroups import cpu_steal_ms

    return cpu_steal_ms() or 0.0


def _probe_all(targets: list[str | None], priority: int, interval_us: int, duration_s: float) -> list[dict[str, Any]]:
    """The probe in every target at once (threads); raises if any failed."""
    results: list[dict[str, Any] | BaseException | None] = [None] * len(targets)

    def run(i: int) -> None:
        try:
            results[i] = _probe_samples(targets[i], priority, interval_us, duration_s)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = []
    for target, res in zip(targets, results, strict=True):
        if isinstance(res, BaseException) or res is None:
            raise RuntimeError(f"probe in {target[:12] if target else 'the host'}: {res}")
        out.append(res)
    return out


def _summarise(kind: str, targets: list[str | None], slices: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Pool the rounds of one kind: per target, then over all targets."""
    per_container = []
    pooled: list[float] = []
    for i, target in enumerate(targets):
        samples = [v for one in slices for v in one[i]["samples"]]
        pooled.extend(samples)
        summary = slices[0][i]["summary"]
        per_container.append(
            {
                "container": target[:12] if target else "host",
                "policy": str(summary.get("policy", "")),
                "priority": int(str(summary.get("priority", 0))),
                "mlocked": bool(summary.get("mlocked")),
                "budget_us": rt_budget(target) if target else None,
                **_stats(samples),
            }
        )
    return {"kind": kind, "containers": per_container, "pooled": _stats(pooled), "histogram": _histogram(pooled)}


def _fifo_refused(container_id: str, priority: int) -> str:
    """Show with measure_wakeups that SCHED_FIFO is refused in a container without a budget."""
    from docker_xms.adapters.engine import Engine
    from docker_xms.usecases.probe import SchedulingRefused, measure_wakeups

    engine = Engine.connect()
    try:
        measure_wakeups(engine, container_id, priority=priority, interval_us=1000, duration_s=0.05)
    except SchedulingRefused as exc:
        return str(exc)
    finally:
        engine.close()
    return ""


def _measure_load(
    load: str,
    targets: dict[str, list[str | None]],
    priorities: dict[str, int],
    interval_us: int,
    duration_s: float,
    rounds: int,
    hogs: int,
) -> list[dict[str, Any]]:
    """Every kind under one load, in rounds of rotating order; one run per kind."""
    slices: dict[str, list[list[dict[str, Any]]]] = {kind: [] for kind in KINDS}
    stolen = dict.fromkeys(KINDS, 0.0)
    n = len(targets["managed"])
    with contextlib.ExitStack() as stack:
        if load == "host":
            stack.enter_context(host_load(hogs, limit_s=len(KINDS) * duration_s + 120 + 5 * rounds * len(KINDS)))
        for r in range(rounds):
            for kind in rotated(KINDS, r):
                with contextlib.ExitStack() as inner:
                    if load == "inside":
                        # The floor's "inside" is the host's root cgroup, where the host probe runs.
                        ids = [t for t in targets[kind] if t]
                        groups = cpu_cgroups(ids) if ids else ()
                        per = max(1, hogs // n) if ids else hogs
                        inner.enter_context(host_load(per, limit_s=duration_s / rounds + 60, cgroups=groups))
                    before = steal_ms()
                    slices[kind].append(_probe_all(targets[kind], priorities[kind], interval_us, duration_s / rounds))
                    stolen[kind] += steal_ms() - before
    return [{**_summarise(kind, targets[kind], slices[kind]), "steal_ms": round(stolen[kind], 1)} for kind in KINDS]


def latency(
    duration_s: float = 12.0,
    interval_us: int = 1000,
    counts: tuple[int, ...] = (1, 2, 4),
    hogs: int = 8,
    rounds: int = 4,
) -> dict[str, Any]:
    """Wake-up lateness: host floor, managed (SCHED_FIFO + budget from docker-xms), unmanaged (SCHED_OTHER) and
    hand-made (SCHED_FIFO + the same budget set by hand), idle and loaded."""
    from docker_xms.adapters.profile_store import load_profile

    priority = load_profile("rtpengine").rt_priority
    out: dict[str, Any] = {
        "duration_s": duration_s,
        "interval_us": interval_us,
        "rounds": rounds,
        "priority": priority,
        "loads": {
            "idle": "nothing else running",
            "host": f"stress-ng --cpu {hogs} in the host's root cgroup",
            "inside": f"stress-ng --cpu {hogs}/N in each measured container's cpu cgroup (host root for the floor)",
        },
        "bin_edges_us": BIN_EDGES,
        "runs": [],
        "setups": {},
    }
    priorities = {"floor": priority, "managed": priority, UNMANAGED: 0, HAND_MADE: priority}
    remove(LAT_PREFIX)
    try:
        for n in counts:
            _measure_count(n, out, priorities, interval_us, duration_s, rounds, hogs)
    finally:
        remove(LAT_PREFIX)
        cli("rt", "rebalance", check=False)
    return out


def _measure_count(
    n: int,
    out: dict[str, Any],
    priorities: dict[str, int],
    interval_us: int,
    duration_s: float,
    rounds: int,
    hogs: int,
) -> None:
    """N containers of each kind, every load; removed again (and the parent given back) before the next N."""
    try:
        like = template(f"{LAT_PREFIX}t{n}")
        share = fair_share(n)
        hand_made = [create_plain(f"{LAT_PREFIX}h{n}-{i}", like, share) for i in range(n)]
        unmanaged = [create_plain(f"{LAT_PREFIX}u{n}-{i}", like) for i in range(n)]
        with hand_made_started(hand_made, share) as hand:
            try:
                start(unmanaged)
                managed = [start_managed(f"{LAT_PREFIX}m{n}-{i}", wait=True) for i in range(n)]
                # Measure servers that have booted, not the boot: systemd, mounts and rtpengine's start-up
                # (it makes a DTLS certificate) are kernel and CPU work that would land in the samples.
                for cid in managed + hand_made + unmanaged:
                    wait_booted(cid)
                time.sleep(3)
                setups = {"managed": setup_of(managed[0]), UNMANAGED: setup_of(unmanaged[0])}
                setups[HAND_MADE] = setup_of(hand_made[0])
                check_like_with_like(setups)
                out["setups"][str(n)] = {**setups, "parent_by_hand": hand}
                print(
                    f"latency N={n}: budget managed {setups['managed']['budget_us']} us, hand-made "
                    f"{setups[HAND_MADE]['budget_us']} us, unmanaged {setups[UNMANAGED]['budget_us']}",
                    flush=True,
                )
                if "fifo_refused" not in out:
                    out["fifo_refused"] = _fifo_refused(unmanaged[0], priorities["managed"])
                targets: dict[str, list[str | None]] = {
                    "floor": [None],
                    "managed": [*managed],
                    UNMANAGED: [*unmanaged],
                    HAND_MADE: [*hand_made],
                }
                for load in LOADS:
                    for run in _measure_load(load, targets, priorities, interval_us, duration_s, rounds, hogs):
                        run.update({"n": n, "load": load})
                        out["runs"].append(run)
                        p = run["pooled"]
                        print(
                            f"latency N={n} {load:6} {run['kind']:9} {run['containers'][0]['policy']:11}: p50 "
                            f"{p['p50_us']:.0f} p99 {p['p99_us']:.0f} p99.9 {p['p999_us']:.0f} max "
                            f"{p['max_us']:.0f} us ({p['samples']} samples, steal {run['steal_ms']:.0f} ms)",
                            flush=True,
                        )
            finally:
                # The hand-made containers go before the parent is given back.
                remove(LAT_PREFIX)
    finally:
        remove(LAT_PREFIX)
