"""WebRTC echo calls from a real browser through the `janus` profile's container: managed against plain Docker.

Two containers of the same image run side by side, set up alike apart from their real-time setup (see
bench.baselines): managed (`docker-xms run -c --profile janus`, with a real-time budget, so Janus runs at SCHED_FIFO
50) and unmanaged (plain `docker run` copied from it, no budget: Janus's SCHED_FIFO is refused and it runs at the
normal policy). In rounds whose order rotates, one headless Chromium on the host (fake camera and microphone, each
call a tab of its own) makes `tabs` echo calls at once to the container's own address (the echo page and Janus's
HTTP API, janus.plugin.echotest) under the `inside` load (stress-ng in the measured container's own cpu cgroup);
once every call is connected over DTLS-SRTP, each tab's getStats() is read, and again `seconds` later.

Per call and kind (audio, video): packets the browser sent and received back in the window, packets lost, the
browser's jitter of the echoed stream, frames dropped (video) and the selected candidate pair's round-trip time.
A screenshot of one connected call is saved beside the raw results.

BENCH_WEBRTC="rounds=2,tabs=2,seconds=10" sets the rounds, calls at once and the measured seconds.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.baselines import UNMANAGED, check_like_with_like, create_plain, rotated, setup_of, snapshot, start
from bench.common import RESULTS, cli, plan_from_setting
from bench.containers import address_of, cpu_cgroups, remove, start_managed, wait_booted
from bench.load import host_load

PREFIX = "bench-webrtc-"
PROFILE = "janus"
CONNECT_TIMEOUT_S = 45.0


@dataclasses.dataclass(frozen=True)
class WebrtcPlan:
    rounds: int = 2
    tabs: int = 2
    seconds: float = 10.0


def plan_from(setting: str | None) -> WebrtcPlan:
    """BENCH_WEBRTC's "rounds=2,tabs=2,seconds=10" (any of them)."""
    return plan_from_setting(setting, WebrtcPlan(), "BENCH_WEBRTC")


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.fmean(known), 3) if known else None


def _max(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(max(known), 3) if known else None


def pooled(kind: str, calls: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One row for a kind from all its calls (each call: its streams and round trip)."""
    streams = [s for c in calls for s in c["streams"]]
    video = [s for s in streams if s["kind"] == "video"]
    audio = [s for s in streams if s["kind"] == "audio"]
    return {
        "kind": kind,
        "calls": len(calls),
        "connected": sum(1 for c in calls if c["connected"]),
        "packets_sent": sum(s["packets_sent"] for s in streams),
        "packets_received": sum(s["packets_received"] for s in streams),
        "packets_lost": sum(s["packets_lost"] for s in streams),
        "frames_dropped": sum(s["frames_dropped"] or 0 for s in video),
        "audio_jitter_ms_mean": _mean([s["jitter_ms"] for s in audio]),
        "audio_jitter_ms_max": _max([s["jitter_ms"] for s in audio]),
        "video_jitter_ms_mean": _mean([s["jitter_ms"] for s in video]),
        "video_jitter_ms_max": _max([s["jitter_ms"] for s in video]),
        "rtt_ms_mean": _mean([c["rtt_ms"] for c in calls]),
        "rtt_ms_max": _max([c["rtt_ms"] for c in calls]),
    }


def _round(url: str, plan: WebrtcPlan, shot: Path | None) -> list[dict[str, Any]]:
    from docker_xms.adapters import browser
    from docker_xms.domain import webrtc

    with browser.chromium(url) as chromium:
        tabs = [chromium.open(url) for _ in range(plan.tabs)]
        states = [chromium.wait_connected(tab, CONNECT_TIMEOUT_S) for tab in tabs]
        first, last = browser.sample(chromium, tabs, plan.seconds)
        if shot is not None:
            chromium.screenshot(tabs[0], shot)
    calls = []
    for connected, before, after in zip(states, first, last, strict=True):
        streams = []
        for kind in webrtc.KINDS:
            a, b = before.stats.stream(kind), after.stats.stream(kind)
            if b is not None:
                streams.append(dataclasses.asdict(webrtc.during(a, b) if a else b))
        calls.append(
            {
                "connected": connected.stats.connected,
                "state": after.state,
                "streams": streams,
                "rtt_ms": after.stats.rtt_ms,
                "remote_candidate": after.stats.remote_candidate,
            }
        )
    return calls


def webrtc_calls(plan: WebrtcPlan | None = None, hogs: int = 8) -> dict[str, Any]:
    """Browser echo calls through Janus, managed against unmanaged, under the `inside` load."""
    plan = plan or plan_from(os.environ.get("BENCH_WEBRTC"))
    out: dict[str, Any] = {
        "plan": dataclasses.asdict(plan),
        "load": f"stress-ng --cpu {hogs} in the measured container's cpu cgroup (inside)",
        "browser": "headless Chromium on the host, fake camera and microphone, one tab per call, echo page at the "
        "container's own address (janus.plugin.echotest over Janus's HTTP API)",
        "rounds": [],
        "runs": [],
        "containers": {},
    }
    cli("build", "--profile", PROFILE, "--if-missing")
    remove(PREFIX)
    stamp = time.strftime("%Y-%m-%dT%H%M", time.gmtime())
    shot_path = RESULTS / f"{stamp}-webrtc-call.png"
    try:
        managed = start_managed(f"{PREFIX}managed", wait=True, extra=("--profile", PROFILE, "--advertise", "container"))
        like = snapshot(managed, PROFILE)
        plain = create_plain(f"{PREFIX}unmanaged", like)
        start([plain])
        ids = {"managed": managed, UNMANAGED: plain}
        for cid in ids.values():
            wait_booted(cid, profile=PROFILE)
        setups = {kind: setup_of(cid, PROFILE) for kind, cid in ids.items()}
        check_like_with_like(setups)
        addresses = {kind: address_of(cid) for kind, cid in ids.items()}
        for kind in ids:
            out["containers"][kind] = {"address": addresses[kind], "setup": setups[kind]}
            print(f"webrtc {kind}: budget {setups[kind]['budget_us']} us at {addresses[kind]}", flush=True)
        groups = dict(zip(ids, cpu_cgroups(list(ids.values())), strict=True))
        done: dict[str, list[dict[str, Any]]] = {kind: [] for kind in ids}
        for r in range(plan.rounds):
            for position, kind in enumerate(rotated(list(ids), r)):
                url = f"http://{addresses[kind]}:8000/docker-xms-echo.html"
                shot = shot_path if kind == "managed" and not shot_path.exists() else None
                with host_load(hogs, limit_s=plan.seconds + 180, cgroups=(groups[kind],)):
                    calls = _round(url, plan, shot)
                done[kind] += calls
                row = pooled(kind, calls)
                out["rounds"].append({"round": r, "position": position, **row, "calls_detail": calls})
                print(
                    f"webrtc round {r + 1} {kind:9}: {row['connected']}/{row['calls']} connected; packets "
                    f"{row['packets_received']} of {row['packets_sent']} back, lost {row['packets_lost']}; jitter "
                    f"audio {row['audio_jitter_ms_mean']} / video {row['video_jitter_ms_mean']} ms; frames dropped "
                    f"{row['frames_dropped']}; RTT {row['rtt_ms_mean']} ms",
                    flush=True,
                )
        for kind, calls in done.items():
            run = pooled(kind, calls)
            out["runs"].append(run)
            print(
                f"webrtc {kind:9}: {run['connected']}/{run['calls']} calls connected; packets {run['packets_received']} "
                f"of {run['packets_sent']} echoed back, lost {run['packets_lost']}; jitter audio "
                f"{run['audio_jitter_ms_mean']} (max {run['audio_jitter_ms_max']}) / video {run['video_jitter_ms_mean']} "
                f"(max {run['video_jitter_ms_max']}) ms; frames dropped {run['frames_dropped']}; RTT {run['rtt_ms_mean']} "
                f"(max {run['rtt_ms_max']}) ms",
                flush=True,
            )
        out["screenshot"] = str(shot_path) if shot_path.exists() else None
    finally:
        remove(PREFIX)
    return out
