"""SIP calls with media through the `sip` profile's container (Kamailio + rtpengine): managed against plain Docker.

Two containers of the same image run side by side, set up alike apart from their real-time setup (see
bench.baselines): managed (`docker-xms run -c --profile sip`, with a real-time budget) and unmanaged (plain
`docker run` copied from it, no budget, so rtpengine's SCHED_FIFO is refused). In rounds whose order rotates, SIPp
(Debian sip-tester) on the host places calls through each container's proxy under the `inside` load (stress-ng in
the measured container's own cpu cgroup: the server's own non-real-time work competing with its relay):

- the callee is SIPp's built-in `uas` with -rtp_echo, the caller plays the shipped scenario (SIPp's G.711 A-law
  recording, then BYE), both bound on docker0's address; `-r` calls per second up to `-l` calls at once, `-m` calls
  per round;
- calls attempted / answered / failed come from SIPp's statistics file (-trace_stat), setup times (INVITE to 200 OK)
  from its response-time trace (-trace_rtt, every call);
- RTP is counted as it crosses docker0 (a packet socket, docker_xms.adapters.sipp.UdpCounter, each call's stream
  told apart by the relay's port): lost = sent towards the relay and not relayed to the other end, each way; the
  jitter is RFC 3550's of each call's echoed stream as the caller receives it (two passes through the relay).

The counting thread runs at SCHED_FIFO 70 (the host's root cgroup has a real-time budget) so that it is not what
drops packets; the kernel's own count of what the packet socket dropped is kept with each round (0 in a valid round).
SIPp itself runs at the host's normal priority, the same for both kinds.

BENCH_CALLS="rounds=3,calls=150,concurrent=100,rate=11" sets the rounds, calls per round and kind, calls at once and
the call rate (any of them; the rest keep these defaults).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.baselines import UNMANAGED, check_like_with_like, create_plain, rotated, setup_of, snapshot, start
from bench.common import cli, plan_from_setting
from bench.latency import address_of, cpu_cgroups, host_load, remove, start_managed, wait_booted

CALLS_PREFIX = "bench-calls-"
PROFILE = "sip"
KINDS = ("managed", UNMANAGED)
COUNTER_PRIORITY = 70
# G.711 at 8 kHz: the RTP clock of SIPp's recording.
CLOCK_RATE = 8000
_SOL_PACKET = 263
_PACKET_STATISTICS = 6


# --- pure parts -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CallsPlan:
    """How much load each round puts on a container."""

    # 11 calls a second of 8 s each, 7 s of media: about 88 calls at once, 78 of them with media flowing.
    rounds: int = 3
    calls: int = 150
    concurrent: int = 100
    rate: float = 11.0


def plan_from(setting: str | None) -> CallsPlan:
    """The plan from BENCH_CALLS ("rounds=3,calls=150,concurrent=100,rate=11", any subset)."""
    return plan_from_setting(setting, CallsPlan(), "BENCH_CALLS")


def sipp_statistics(text: str) -> dict[str, Any]:
    """Calls attempted / answered / failed (and why) from the last row of SIPp's -trace_stat file (';'-separated,
    one header row, then one row per dump; the "(C)" columns are cumulative)."""
    rows = [line for line in text.splitlines() if line.strip()]
    if len(rows) < 2:
        raise ValueError("SIPp's statistics file has no data row")
    row = dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))

    def count(column: str) -> int:
        value = row.get(column, "").strip()
        return int(value) if value.isdigit() else 0

    reasons = {
        column[len("Failed") : -len("(C)")]: count(column)
        for column in row
        if column.startswith("Failed") and column.endswith("(C)") and column != "FailedCall(C)" and count(column)
    }
    # CurrentCall in each dump (one a second with -fd 1): the most calls SIPp held open at once.
    current = (dict(zip(rows[0].split(";"), r.split(";"), strict=False)).get("CurrentCall", "") for r in rows[1:])
    return {
        "calls_at_once": max((int(v) for v in current if v.strip().isdigit()), default=0),
        "attempted": count("TotalCallCreated"),
        "answered": count("SuccessfulCall(C)"),
        "failed": count("FailedCall(C)"),
        "failed_because": reasons,
        "retransmissions": count("Retransmissions(C)"),
    }


def response_times_ms(text: str) -> list[float]:
    """Each call's setup time (INVITE sent to 200 OK received) from SIPp's -trace_rtt file
    ("Date_ms;response_time_ms;rtd_no" rows)."""
    times = []
    for line in text.splitlines()[1:]:
        fields = line.strip().split(";")
        if len(fields) >= 2:
            with contextlib.suppress(ValueError):
                times.append(float(fields[1]))
    return times


def nearest_rank(samples: Sequence[float], percent: float) -> float | None:
    """The nearest-rank percentile (as the other sections report them), None for no samples."""
    from docker_xms.domain.stats import nearest_rank as rank

    return rank(sorted(samples), percent) if samples else None


def rfc3550_jitter_ms(arrivals: Iterable[tuple[int, int]], clock_rate: int = CLOCK_RATE) -> float:
    """RFC 3550 interarrival jitter of one stream from (RTP timestamp, arrival ns) in arrival order."""
    from bench.rtpstats import JitterMeter

    meter = JitterMeter(clock_rate)
    for timestamp, arrival_ns in arrivals:
        meter.add(timestamp, arrival_ns)
    return meter.jitter_ms


def split_calls(arrivals: Sequence[tuple[int, int]], gap_ns: int = 500_000_000) -> list[list[tuple[int, int]]]:
    """The calls in what arrived at one local port from one relay port: rtpengine hands a freed port to a later call
    (delete-delay 0), and every call plays the same recording (same SSRC and timestamps), so a pause in arrivals
    longer than `gap_ns` is where one call's stream ends and the next one's begins."""
    calls: list[list[tuple[int, int]]] = []
    for arrival in arrivals:
        if not calls or arrival[1] - calls[-1][-1][1] > gap_ns:
            calls.append([])
        calls[-1].append(arrival)
    return calls


def peak_overlap(intervals: Iterable[tuple[int, int]]) -> int:
    """The most intervals (start, end) open at one instant: how many calls' media flowed at once."""
    edges = sorted(edge for start, end in intervals for edge in ((start, 1), (end, -1)))
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def rtp_summary(
    sent: Mapping[int, int], received: Mapping[tuple[int, int], list[tuple[int, int]]], caller: int, callee: int
) -> dict[str, Any]:
    """Loss each way and the echoed stream's jitter from what crossed docker0.

    `sent`: packets that left the host from each local port; `received`: (RTP timestamp, arrival ns) of the packets
    that arrived at a local port, keyed by (local port, the relay's port it came from): one stream per call and leg.
    """
    at_callee = sum(len(v) for (port, _), v in received.items() if port == callee)
    at_caller = sum(len(v) for (port, _), v in received.items() if port == caller)
    echoed = [c for (port, _), v in received.items() if port == caller for c in split_calls(v) if len(c) > 1]
    jitters = [rfc3550_jitter_ms(v) for v in echoed]
    return {
        "sent_by_caller": sent.get(caller, 0),
        "relayed_to_callee": at_callee,
        "lost_to_callee": max(0, sent.get(caller, 0) - at_callee),
        "echoed_by_callee": sent.get(callee, 0),
        "relayed_to_caller": at_caller,
        "lost_to_caller": max(0, sent.get(callee, 0) - at_caller),
        "not_echoed": max(0, at_callee - sent.get(callee, 0)),
        "echoed_streams": len(echoed),
        "echoed_streams_at_once": peak_overlap((c[0][1], c[-1][1]) for c in echoed),
        "jitter_ms_mean": sum(jitters) / len(jitters) if jitters else None,
        "jitter_ms_p95": nearest_rank(jitters, 95),
        "jitter_ms_max": max(jitters) if jitters else None,
    }


def pooled(kind: str, rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One kind's rounds as one run: counts summed, setup percentiles over every call's setup time, jitter averaged
    over the rounds' echoed streams (each a running mean already), its worst stream kept."""
    setups = [t for r in rounds for t in r["setup_ms"]]
    summed = {
        key: sum(r["sipp"][key] for r in rounds) for key in ("attempted", "answered", "failed", "retransmissions")
    }
    rtp_keys = ("sent_by_caller", "lost_to_callee", "echoed_by_callee", "lost_to_caller", "not_echoed")
    rtp = {key: sum(r["rtp"][key] for r in rounds) for key in rtp_keys}
    streams = sum(r["rtp"]["echoed_streams"] for r in rounds)
    at_once = {
        "calls_at_once": max(r["sipp"].get("calls_at_once", 0) for r in rounds),
        "echoed_streams_at_once": max(r["rtp"].get("echoed_streams_at_once", 0) for r in rounds),
    }
    weighted = [(r["rtp"]["jitter_ms_mean"], r["rtp"]["echoed_streams"]) for r in rounds if r["rtp"]["echoed_streams"]]
    worst = [r["rtp"]["jitter_ms_max"] for r in rounds if r["rtp"]["jitter_ms_max"] is not None]
    return {
        "kind": kind,
        "rounds": len(rounds),
        **summed,
        "setup_ms_p50": nearest_rank(setups, 50),
        "setup_ms_p95": nearest_rank(setups, 95),
        "setup_ms_max": max(setups) if setups else None,
        "rtp_lost": rtp["lost_to_callee"] + rtp["lost_to_caller"],
        **rtp,
        "echoed_streams": streams,
        **at_once,
        "jitter_ms_mean": sum(j * n for j, n in weighted) / streams if streams else None,
        "jitter_ms_max": max(worst) if worst else None,
        "counter_drops": sum(r["counter_drops"] for r in rounds),
    }


# --- on the host ------------------------------------------------------------------------------------------


def _counter_class() -> Any:
    from docker_xms.adapters.sipp import UdpCounter

    class StreamCounter(UdpCounter):
        """docker_xms's UdpCounter, telling each call's stream apart by the relay's port it comes from, run at
        SCHED_FIFO so that 50 calls' packets (about 10,000 a second on docker0) are all read."""

        def __init__(self, interface: str, ports: set[int]) -> None:
            super().__init__(interface, ports)
            self.sent = dict.fromkeys(ports, 0)
            self.streams: dict[tuple[int, int], list[tuple[int, int]]] = {}
            self.fifo = "SCHED_OTHER"

        def _run(self) -> None:
            # Linux applies sched_setscheduler(0) to the calling thread only: SIPp keeps its normal priority.
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(COUNTER_PRIORITY))
                self.fifo = f"SCHED_FIFO {COUNTER_PRIORITY}"
            except OSError as exc:
                self.fifo = f"SCHED_OTHER (SCHED_FIFO refused: {exc.strerror})"
            super()._run()

        def _count(self, frame: bytes, outgoing: bool, now_ns: int) -> None:
            if len(frame) < 42 or frame[12:14] != b"\x08\x00":
                return
            ip = frame[14:]
            header = (ip[0] & 0x0F) * 4
            if ip[9] != 17 or struct.unpack("!H", ip[6:8])[0] & 0x1FFF:
                return
            source, dest = struct.unpack("!HH", ip[header : header + 4])
            payload = ip[header + 8 :]
            if outgoing and source in self.sent:
                self.sent[source] += 1
            elif not outgoing and dest in self.sent and len(payload) >= 12 and payload[0] >> 6 == 2:
                (timestamp,) = struct.unpack("!I", payload[4:8])
                self.streams.setdefault((dest, source), []).append((timestamp, now_ns))

        def drops(self) -> int:
            """Packets the kernel could not queue to this socket (read before it is closed)."""
            raw = self._sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
            return int(struct.unpack("II", raw)[1])

    return StreamCounter


def docker0_address() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=True)
    return out.stdout.split()[3].split("/")[0]


def _free_port(host: str, also_plus_2: bool = False) -> int:
    """A UDP port on `host` that nothing holds now; with `also_plus_2`, one whose port + 2 is free too (SIPp's
    echo listens there as well, for RTCP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if not also_plus_2:
            return port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((host, port + 2))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free pair of UDP ports on {host}")


def place_calls(proxy: str, local: str, plan: CallsPlan, work: Path) -> dict[str, Any]:
    """One round: plan.calls calls from a SIPp caller to an echoing SIPp callee through the proxy at proxy:5060."""
    from docker_xms.adapters.sipp import SCENARIO, sipp_path

    sipp = sipp_path()
    ports = {"uas_sip": _free_port(local), "uac_sip": _free_port(local)}
    ports["uas_media"] = _free_port(local, also_plus_2=True)
    ports["uac_media"] = _free_port(local, also_plus_2=True)
    timeout_s = plan.calls / plan.rate + 60
    common = ["-i", local, "-mi", local, "-nostdin", "-timeout", f"{int(timeout_s)}s", "-timeout_error"]
    uas = [sipp, "-sn", "uas", "-rtp_echo", "-p", str(ports["uas_sip"]), "-mp", str(ports["uas_media"])]
    uac = [
        sipp, f"{local}:{ports['uas_sip']}", "-rsa", f"{proxy}:5060", "-sf", str(SCENARIO),
        "-p", str(ports["uac_sip"]), "-mp", str(ports["uac_media"]),
        "-r", f"{plan.rate:g}", "-l", str(plan.concurrent), "-m", str(plan.calls),
        "-trace_stat", "-stf", str(work / "stat.csv"), "-fd", "1", "-trace_rtt", "-rtt_freq", "1",
        "-trace_err", "-error_file", str(work / "errors.log"),
    ]  # fmt: skip
    caller, callee = ports["uac_media"], ports["uas_media"]
    processes: list[subprocess.Popen[bytes]] = []
    counter_class = _counter_class()
    started = time.monotonic()
    with counter_class("docker0", {caller, callee}) as counter:
        try:
            out = subprocess.DEVNULL
            processes.append(subprocess.Popen([*uas, *common], stdout=out, stderr=out, cwd=work))
            time.sleep(0.3)  # the callee listens before the first INVITE reaches it
            processes.append(subprocess.Popen([*uac, *common], stdout=out, stderr=out, cwd=work))
            code = processes[1].wait(timeout=timeout_s + 30)
            time.sleep(0.5)  # the last echoes on their way back
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        process.kill()
                process.wait()
        drops = counter.drops()
    stats = sipp_statistics((work / "stat.csv").read_text())
    rtt = sorted(work.glob("*_rtt.csv"))
    errors = (work / "errors.log").read_text(errors="replace") if (work / "errors.log").exists() else ""
    return {
        "seconds": round(time.monotonic() - started, 1),
        "sipp_exit": code,
        "sipp": stats,
        "setup_ms": [t for path in rtt for t in response_times_ms(path.read_text())],
        "rtp": rtp_summary(counter.sent, counter.streams, caller, callee),
        "counter": counter.fifo,
        "counter_drops": drops,
        "errors_tail": errors.strip().splitlines()[-5:],
    }


def _rtpengine_sessions(container_id: str) -> str:
    out = subprocess.run(
        ["docker", "exec", container_id, "rtpengine-ctl", "list", "numsessions"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return (out.stdout or out.stderr).strip()


def _ensure_image() -> None:
    cli("build", "--profile", PROFILE, "--if-missing")


def calls(plan: CallsPlan | None = None, hogs: int = 8) -> dict[str, Any]:
    """Calls with media through the sip profile's proxy, managed against unmanaged, under the `inside` load."""
    from bench.media import rtpengine_threads

    plan = plan or plan_from(os.environ.get("BENCH_CALLS"))
    local = docker0_address()
    out: dict[str, Any] = {
        "plan": dataclasses.asdict(plan),
        "load": f"stress-ng --cpu {hogs} in the measured container's cpu cgroup (inside)",
        "caller_and_callee": f"SIPp on the host at {local} (docker0), through the proxy at the container's :5060",
        "scenario": "uac_g711a.xml: INVITE, 200, ACK, SIPp's g711a.pcap (236 packets, 7 s), pause 8 s, BYE",
        "runs": [],
        "rounds": [],
        "containers": {},
    }
    _ensure_image()
    remove(CALLS_PREFIX)
    try:
        managed = start_managed(
            f"{CALLS_PREFIX}managed", wait=True, extra=("--profile", PROFILE, "--advertise", "container")
        )
        like = snapshot(managed, PROFILE)
        plain = create_plain(f"{CALLS_PREFIX}unmanaged", like)
        start([plain])
        ids = {"managed": managed, UNMANAGED: plain}
        for cid in ids.values():
            wait_booted(cid, profile=PROFILE)
        setups = {kind: setup_of(cid, PROFILE) for kind, cid in ids.items()}
        check_like_with_like(setups)
        addresses = {kind: address_of(cid) for kind, cid in ids.items()}
        for kind, cid in ids.items():
            threads = rtpengine_threads(cid)
            out["containers"][kind] = {"address": addresses[kind], "rtpengine_threads": threads, "setup": setups[kind]}
            print(f"calls {kind}: budget {setups[kind]['budget_us']} us, rtpengine threads {threads}", flush=True)
        groups = dict(zip(ids, cpu_cgroups(list(ids.values())), strict=True))
        done: dict[str, list[dict[str, Any]]] = {kind: [] for kind in ids}
        for r in range(plan.rounds):
            for position, kind in enumerate(rotated(list(ids), r)):
                limit = plan.calls / plan.rate + 120
                with host_load(hogs, limit_s=limit, cgroups=(groups[kind],)), tempfile.TemporaryDirectory() as tmp:
                    measured = place_calls(addresses[kind], local, plan, Path(tmp))
                measured.update(round=r, position=position, kind=kind, sessions_after=_rtpengine_sessions(ids[kind]))
                done[kind].append(measured)
                out["rounds"].append({k: v for k, v in measured.items() if k != "setup_ms"})
                s, rtp = measured["sipp"], measured["rtp"]
                p95 = nearest_rank(measured["setup_ms"], 95)
                print(
                    f"calls round {r + 1} {kind:9}: {s['attempted']} attempted, {s['answered']} answered, "
                    f"{s['failed']} failed {s['failed_because'] or ''}; at once {s['calls_at_once']} calls, "
                    f"{rtp['echoed_streams_at_once']} with media; setup p95 {p95} ms; RTP lost "
                    f"{rtp['lost_to_callee']} + {rtp['lost_to_caller']} of {rtp['sent_by_caller']} + "
                    f"{rtp['echoed_by_callee']}; echo jitter {rtp['jitter_ms_mean']} ms; counter drops "
                    f"{measured['counter_drops']}; {measured['seconds']} s",
                    flush=True,
                )
        for kind, measured_rounds in done.items():
            run = pooled(kind, measured_rounds)
            run["setup_ms"] = sorted(t for m in measured_rounds for t in m["setup_ms"])
            out["runs"].append(run)
            print(
                f"calls {kind:9}: {run['attempted']} attempted, {run['answered']} answered, {run['failed']} failed; at once "
                f"{run['calls_at_once']} calls, {run['echoed_streams_at_once']} with media; "
                f"setup p50 {run['setup_ms_p50']} / p95 {run['setup_ms_p95']} ms; RTP lost {run['rtp_lost']} of "
                f"{run['sent_by_caller'] + run['echoed_by_callee']}; echo jitter {run['jitter_ms_mean']} ms "
                f"(worst call {run['jitter_ms_max']} ms)",
                flush=True,
            )
    finally:
        remove(CALLS_PREFIX)
    return out
