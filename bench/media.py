"""RTP relayed by rtpengine in a docker-xms container against the same image under plain `docker run`.

Three containers run side by side, set up alike apart from their real-time setup (see bench.baselines): managed
(docker-xms), unmanaged (plain, no budget) and hand-made (plain with `--cpu-rt-runtime` of the same share, the parent
raised by hand). Under each load they are measured in rounds whose order rotates, so that a noisy minute on the
machine lands on every kind alike; each kind's rounds are then pooled.

Two legs (A and B) on the host each send a 20 ms PCMU stream to rtpengine, which relays it to the other leg; the
receiver computes RFC 3550 jitter, late and lost packets. Sender and receiver are Python threads of this process
on the host, so host load hits them too: the same two streams are also sent directly over 127.0.0.1 (no relay)
under the same conditions, and relay jitter minus direct jitter is the jitter added by the relay path.
The measuring process runs at SCHED_FIFO 70 (the host's root cgroup has a real-time budget) unless told otherwise,
so that the measurement tool is not the bottleneck.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
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
from bench.containers import address_of, remove, start_managed, wait_booted
from bench.load import host_load

MEDIA_PREFIX = "bench-media-"
KINDS = ("managed", UNMANAGED, HAND_MADE)
TOOL_PRIORITY = 70
STAGGER_NS = 10_000_000  # leg B sends 10 ms after leg A, so that the two senders do not wake together


@contextlib.contextmanager
def tool_policy(policy: str) -> Iterator[str]:
    """Run the block (and the threads it starts) at SCHED_FIFO 70 or SCHED_OTHER; yields what was obtained."""
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    switch = sys.getswitchinterval()
    got = "SCHED_OTHER"
    if policy == "fifo":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(TOOL_PRIORITY))
            got = f"SCHED_FIFO {TOOL_PRIORITY}"
        except OSError as exc:
            got = f"SCHED_OTHER (SCHED_FIFO refused: {exc.strerror})"
    # A short GIL switch interval, so that a receiver thread is not held 5 ms behind a spinning sender.
    sys.setswitchinterval(0.0002)
    try:
        yield got
    finally:
        sys.setswitchinterval(switch)
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, before[0], before[1])


def _running_jitter(arrivals: list[Any]) -> list[float]:
    from docker_xms.adapters.rtp_wire import PCMU_CLOCK_RATE
    from docker_xms.domain.stats import JitterMeter

    meter = JitterMeter(PCMU_CLOCK_RATE)
    series = []
    for arrival in arrivals:
        meter.add(arrival.timestamp, arrival.arrival_ns)
        series.append(round(meter.jitter_ms, 5))
    return series


def _two_streams(
    leg_a: Any, leg_b: Any, a_sends_to: tuple[str, int], b_sends_to: tuple[str, int], packets: int
) -> dict[str, Any]:
    """Send A->B and B->A at once; stats of what each leg received."""
    from lab.rtpstats import stream_stats

    from docker_xms.adapters.rtp import exchange
    from docker_xms.domain.stats import percentiles

    done = exchange(leg_a, leg_b, a_sends_to, b_sends_to, packets, time.perf_counter_ns() + 50_000_000, STAGGER_NS)
    arrivals = {"a_to_b": done.at_b, "b_to_a": done.at_a}
    reports = {"a": done.sent_by_a, "b": done.sent_by_b}
    out: dict[str, Any] = {}
    for name, sender in (("a_to_b", "a"), ("b_to_a", "b")):
        stats = stream_stats(arrivals[name], origin=reports[sender].origin, sent=packets)
        delay = stats.delay_percentiles() if stats.received else None
        send_late = percentiles(v / 1000 for v in reports[sender].send_lateness_ns)
        out[name] = {
            "sent": packets,
            "received": stats.received,
            "lost": stats.lost,
            "late": stats.late,
            "late_after_ms": stats.late_after_ms,
            "duplicates": stats.duplicates,
            "reordered": stats.reordered,
            "jitter_ms": stats.jitter_ms,
            "delay_p50_ms": delay.p50 if delay else None,
            "delay_p99_ms": delay.p99 if delay else None,
            "delay_max_ms": delay.max if delay else None,
            "send_late_p99_us": send_late.p99,
            "send_late_max_us": send_late.max,
            "running_jitter_ms": _running_jitter(arrivals[name]),
        }
    out["jitter_ms"] = (out["a_to_b"]["jitter_ms"] + out["b_to_a"]["jitter_ms"]) / 2
    out["lost"] = out["a_to_b"]["lost"] + out["b_to_a"]["lost"]
    out["late"] = out["a_to_b"]["late"] + out["b_to_a"]["late"]
    return out


def _relayed(address: str, packets: int) -> dict[str, Any]:
    from docker_xms.adapters.rtp import NgClient, local_address_towards, open_call, udp_socket

    local = local_address_towards(address)
    with udp_socket(local) as leg_a, udp_socket(local) as leg_b, NgClient(address) as ng:
        call = open_call(ng, leg_a, leg_b)
        a_sends_to, b_sends_to = call.a_sends_to, call.b_sends_to
        try:
            return _two_streams(leg_a, leg_b, a_sends_to, b_sends_to, packets)
        finally:
            with contextlib.suppress(Exception):
                # At once: rtpengine keeps a deleted call's ports for 30 s by default, and the rounds come back
                # to the same container sooner than that.
                ng.delete(call.call_id, call.from_tag, **{"delete-delay": 0})


def _direct(packets: int) -> dict[str, Any]:
    from docker_xms.adapters.rtp import udp_socket

    with udp_socket() as leg_a, udp_socket() as leg_b:
        return _two_streams(leg_a, leg_b, leg_b.getsockname(), leg_a.getsockname(), packets)


def _wait_for_ng(address: str, timeout: float = 60) -> None:
    from docker_xms.adapters.rtp import NgClient, NgError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with NgClient(address, timeout=0.3, attempts=1) as ng:
                if ng.ping():
                    return
        except NgError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"rtpengine at {address} did not answer ng ping within {timeout:.0f} s")


def rtpengine_threads(container_id: str) -> dict[str, int]:
    """How many of the container's rtpengine threads run SCHED_FIFO and SCHED_OTHER (from /proc on the host)."""
    from docker_xms.adapters.cgroups import thread_policies
    from docker_xms.adapters.engine import Engine
    from docker_xms.errors import NotFound

    engine = Engine.connect()
    counts = {"fifo": 0, "other": 0}
    try:
        for pid in engine.container_pids(container_id):
            try:
                threads = thread_policies(pid)
            except NotFound:
                continue  # the process ended while we looked
            # The process is rtpengine when its main thread is; its workers have names of their own.
            if not any(t.tid == pid and t.comm == "rtpengine" for t in threads):
                continue
            for thread in threads:
                counts["fifo" if thread.policy == "SCHED_FIFO" else "other"] += 1
    finally:
        engine.close()
    return counts


def _pooled(kind: str, load: str, rounds: list[dict[str, Any]], packets: int) -> dict[str, Any]:
    """One kind's rounds under one load and tool as one run: jitter averaged over the rounds (each round's RFC 3550
    estimate is a running mean already), lost and late packets summed, delays at their worst round."""

    def side(leg: str) -> dict[str, Any]:
        jitters = [r[leg]["jitter_ms"] for r in rounds]
        out = {
            "jitter_ms": sum(jitters) / len(jitters),
            "jitter_max_ms": max(jitters),
            "lost": sum(r[leg]["lost"] for r in rounds),
            "late": sum(r[leg]["late"] for r in rounds),
            "sent": 2 * packets * len(rounds),
        }
        for key in ("delay_p99_ms", "delay_max_ms"):
            values = [r[leg][d][key] for r in rounds for d in ("a_to_b", "b_to_a") if r[leg][d][key] is not None]
            out[key] = max(values) if values else None
        return out

    relay, direct = side("relay"), side("direct")
    return {
        "kind": kind,
        "load": load,
        "tool": rounds[0]["tool"],
        "relay": relay,
        "direct": direct,
        "added_jitter_ms": relay["jitter_ms"] - direct["jitter_ms"],
        "rounds": rounds,
    }


def media(
    packets: int = 750,
    hogs: int = 8,
    tools: tuple[str, ...] = ("fifo",),
    other_tool_when_loaded: bool = True,
    rounds: int = 3,
) -> dict[str, Any]:
    """Jitter, loss and lateness of RTP relayed by rtpengine: managed, unmanaged and hand-made, idle and loaded.

    Loads: `host` = stress-ng in the host's root cgroup; `inside` = stress-ng in the measured container's own cpu
    cgroup, which is where a media server's own non-real-time work (codecs, recording, logs) competes with its relay.
    `packets` per kind, load and tool are sent in `rounds` parts.
    """
    from bench.latency import LOADS

    per_round = max(50, packets // rounds)
    out: dict[str, Any] = {
        "packets": per_round * rounds,
        "packets_per_round": per_round,
        "rounds": rounds,
        "ptime_ms": 20,
        "loads": {
            "idle": "nothing else running",
            "host": f"stress-ng --cpu {hogs} in the host's root cgroup",
            "inside": f"stress-ng --cpu {hogs} in the measured container's cpu cgroup",
        },
        "runs": [],
        "containers": {},
    }
    remove(MEDIA_PREFIX)
    try:
        like = template(f"{MEDIA_PREFIX}template")
        share = fair_share(1)
        plain = {
            UNMANAGED: create_plain(f"{MEDIA_PREFIX}unmanaged", like),
            HAND_MADE: create_plain(f"{MEDIA_PREFIX}hand-made", like, share),
        }
        with hand_made_started([plain[HAND_MADE]], share) as hand:
            try:
                start([plain[UNMANAGED]])
                ids = {"managed": start_managed(f"{MEDIA_PREFIX}managed", wait=True), **plain}
                out["parent_by_hand"] = hand
                _measure(out, ids, LOADS, tools, other_tool_when_loaded, per_round, rounds, hogs)
            finally:
                # The hand-made container goes before the parent is given back.
                remove(MEDIA_PREFIX)
    finally:
        remove(MEDIA_PREFIX)
    return out


def _measure(
    out: dict[str, Any],
    ids: dict[str, str],
    loads: tuple[str, ...],
    tools: tuple[str, ...],
    other_tool_when_loaded: bool,
    packets: int,
    rounds: int,
    hogs: int,
) -> None:
    from bench.containers import cpu_cgroups

    addresses = {}
    for kind, cid in ids.items():
        wait_booted(cid)
        addresses[kind] = address_of(cid)
        _wait_for_ng(addresses[kind])
    time.sleep(1)
    setups = {kind: setup_of(cid) for kind, cid in ids.items()}
    check_like_with_like(setups)
    for kind, cid in ids.items():
        threads = rtpengine_threads(cid)
        out["containers"][kind] = {"budget_us": setups[kind]["budget_us"], "rtpengine_threads": threads}
        out["containers"][kind]["setup"] = setups[kind]
        print(f"media {kind}: budget {setups[kind]['budget_us']} us, rtpengine threads {threads}")
    groups = dict(zip(ids, cpu_cgroups(list(ids.values())), strict=True))
    for load in loads:
        policies = list(tools)
        if load != "idle" and other_tool_when_loaded and "other" not in policies:
            policies.append("other")
        done: dict[tuple[str, str], list[dict[str, Any]]] = {(k, p): [] for k in ids for p in policies}
        with contextlib.ExitStack() as stack:
            if load == "host":
                limit = len(ids) * len(policies) * rounds * (2 * packets * 0.02 + 10) + 120
                stack.enter_context(host_load(hogs, limit_s=limit))
            for r in range(rounds):
                for position, kind in enumerate(rotated(list(ids), r)):
                    with contextlib.ExitStack() as inner:
                        if load == "inside":
                            limit = len(policies) * (2 * packets * 0.02 + 10) + 60
                            inner.enter_context(host_load(hogs, limit_s=limit, cgroups=(groups[kind],)))
                        for policy in policies:
                            with tool_policy(policy) as got:
                                relay = _relayed(addresses[kind], packets)
                                direct = _direct(packets)
                            done[(kind, policy)].append(
                                {"round": r, "position": position, "tool": got, "relay": relay, "direct": direct}
                            )
                            print(
                                f"media {load:6} round {r + 1} {kind:9} tool {got}: relay jitter "
                                f"{relay['jitter_ms']:.3f} ms, direct {direct['jitter_ms']:.3f} ms; lost "
                                f"{relay['lost']}, late {relay['late']} of {2 * packets}",
                                flush=True,
                            )
        for (kind, _), measured in done.items():
            run = _pooled(kind, load, measured, packets)
            out["runs"].append(run)
            print(
                f"media {kind:9} {load:6} tool {run['tool']}: relay jitter {run['relay']['jitter_ms']:.3f} ms, direct "
                f"{run['direct']['jitter_ms']:.3f} ms, added {run['added_jitter_ms']:+.3f} ms; lost "
                f"{run['relay']['lost']}, late {run['relay']['late']} of {run['relay']['sent']} ({rounds} rounds)",
                flush=True,
            )
