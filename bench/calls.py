"""SIP calls with media through the `sip` profile's container (Kamailio + rtpengine): managed against plain Docker.

Callers and callees are where remote phones are: SIPp (Debian sip-tester) in network namespaces of their own, each
on its own link to the host (lab/peer_links.py), whose only route is the host's address on that link. They reach
the server at the address it advertises, which the host holds on a bridge of the benchmark's own (no traffic
leaves this machine), never at the container's address. The callee talks as a phone does: it plays its own G.711
recording from the answer on, to the address and port its SDP names (assets/sipp/uas_g711a.xml), not an echo of
what it received.

Two containers of the same image, set up alike apart from what docker-xms adds (see bench.baselines), take turns,
one running at a time, since both are reached at the same host ports:

- managed: `docker-xms run -c --profile sip --ports dnat --advertise ADDR`, with a real-time budget, its media
  range forwarded by one DNAT rule and sent out from the advertised address by one SNAT rule;
- unmanaged: the plain Docker way, a `docker run` copy with no budget (so rtpengine's SCHED_FIFO is refused),
  publishing the same SIP port and every media port on the same host ports (one docker-proxy per port).

In rounds whose order rotates, under the `inside` load (stress-ng in the measured container's own cpu cgroup):

- `-r` calls per second up to `-l` calls at once, `-m` calls per round; calls attempted / answered / failed from
  SIPp's statistics file (-trace_stat), setup times (INVITE to 200 OK) from its response-time trace (-trace_rtt);
- RTP is counted as it crosses docker0 (a packet socket, docker_xms.adapters.sipp.UdpCounter, each call's stream
  told apart by the relay's port): lost = sent towards the relay and not relayed to the other end, each way; the
  jitter is RFC 3550's of every stream as its receiver gets it (one pass through the relay).

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
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab.peer_links import Peer

from bench.baselines import UNMANAGED, check_like_with_like, create_plain, rotated, setup_of, snapshot, start
from bench.common import cli, client, plan_from_setting
from bench.containers import cpu_cgroups, remove, start_managed, wait_booted
from bench.load import host_load

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
    sent: Mapping[int, int],
    arrived: Mapping[int, int],
    received: Mapping[tuple[int, int], list[tuple[int, int]]],
    caller: int,
    callee: int,
) -> dict[str, Any]:
    """Loss each way, counted by each leg's own namespace, and the streams' jitter from what crossed docker0.

    `sent` and `arrived`: RTP packets each leg's media port sent and received, by the kernel's counters in the
    leg's namespace (a packet NAT drops on the host never reaches docker0, so only the legs see all of the loss);
    `received`: (RTP timestamp, arrival ns) of the packets the relay sent towards a leg's port, as they crossed
    docker0, keyed by (that port, the relay's port they came from): one stream per call and leg, each a recording
    played by the other leg.
    """
    streams = [c for (port, _), v in received.items() if port in (caller, callee) for c in split_calls(v) if len(c) > 1]
    from docker_xms.domain.stats import interarrival_jitter_ms

    jitters = [interarrival_jitter_ms(v, CLOCK_RATE) for v in streams]
    return {
        "sent_by_caller": sent.get(caller, 0),
        "relayed_to_callee": arrived.get(callee, 0),
        "lost_to_callee": max(0, sent.get(caller, 0) - arrived.get(callee, 0)),
        "sent_by_callee": sent.get(callee, 0),
        "relayed_to_caller": arrived.get(caller, 0),
        "lost_to_caller": max(0, sent.get(callee, 0) - arrived.get(caller, 0)),
        "streams": len(streams),
        "streams_at_once": peak_overlap((c[0][1], c[-1][1]) for c in streams),
        "jitter_ms_mean": sum(jitters) / len(jitters) if jitters else None,
        "jitter_ms_p95": nearest_rank(jitters, 95),
        "jitter_ms_max": max(jitters) if jitters else None,
    }


def pooled(kind: str, rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One kind's rounds as one run: counts summed, setup percentiles over every call's setup time, jitter averaged
    over the rounds' streams (each a running mean already), its worst stream kept."""
    setups = [t for r in rounds for t in r["setup_ms"]]
    summed = {
        key: sum(r["sipp"][key] for r in rounds) for key in ("attempted", "answered", "failed", "retransmissions")
    }
    rtp_keys = ("sent_by_caller", "lost_to_callee", "sent_by_callee", "lost_to_caller")
    rtp = {key: sum(r["rtp"][key] for r in rounds) for key in rtp_keys}
    streams = sum(r["rtp"]["streams"] for r in rounds)
    at_once = {
        "calls_at_once": max(r["sipp"].get("calls_at_once", 0) for r in rounds),
        "streams_at_once": max(r["rtp"].get("streams_at_once", 0) for r in rounds),
    }
    weighted = [(r["rtp"]["jitter_ms_mean"], r["rtp"]["streams"]) for r in rounds if r["rtp"]["streams"]]
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
        "streams": streams,
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


def _counted(peer: Peer, chain: str, rule: int = -1) -> int:
    """Packets a counting rule of the leg's namespace saw (lab/peer_links.py: INPUT from the advertised address,
    INPUT from anywhere, OUTPUT); by default the chain's last rule."""
    out = peer.run("iptables", "-w", "-nvxL", chain).stdout
    rows = [line.split() for line in out.splitlines() if "udp" in line.split()]
    return int(rows[rule][0])


# The legs' ports inside their own namespaces (each leg alone there), told apart on docker0 by number.
CALLER_MEDIA, CALLEE_MEDIA, SIP_PORT = 6000, 7000, 5060


def place_calls(proxy: tuple[str, int], caller: Peer, callee: Peer, plan: CallsPlan, work: Path) -> dict[str, Any]:
    """One round: plan.calls calls from a SIPp caller to a SIPp callee that talks back, through the proxy."""
    from docker_xms.adapters.sipp import SCENARIO, sipp_path

    sipp = sipp_path()
    timeout_s = plan.calls / plan.rate + 60
    common = ["-nostdin", "-timeout", f"{int(timeout_s)}s", "-timeout_error"]
    uas = [
        sipp, "-sf", str(SCENARIO.with_name("uas_g711a.xml")), "-i", callee.address, "-mi", callee.address,
        "-p", str(SIP_PORT), "-mp", str(CALLEE_MEDIA), "-trace_err", "-error_file", str(work / "uas-errors.log"),
    ]  # fmt: skip
    uac = [
        sipp, f"{callee.address}:{SIP_PORT}", "-rsa", f"{proxy[0]}:{proxy[1]}", "-sf", str(SCENARIO),
        "-i", caller.address, "-mi", caller.address, "-p", str(SIP_PORT), "-mp", str(CALLER_MEDIA),
        "-r", f"{plan.rate:g}", "-l", str(plan.concurrent), "-m", str(plan.calls),
        "-trace_stat", "-stf", str(work / "stat.csv"), "-fd", "1", "-trace_rtt", "-rtt_freq", "1",
        "-trace_err", "-error_file", str(work / "errors.log"),
    ]  # fmt: skip
    processes: list[subprocess.Popen[str]] = []
    counter_class = _counter_class()
    before = [
        _counted(caller, "OUTPUT"), _counted(callee, "OUTPUT"), _counted(caller, "INPUT"), _counted(callee, "INPUT"),
        _counted(caller, "INPUT", 0), _counted(callee, "INPUT", 0),
    ]  # fmt: skip
    started = time.monotonic()
    with counter_class("docker0", {CALLER_MEDIA, CALLEE_MEDIA}) as counter:
        try:
            out = subprocess.DEVNULL
            processes.append(callee.popen(*uas, *common, stdout=out, stderr=out, cwd=work))
            time.sleep(0.3)  # the callee listens before the first INVITE reaches it
            processes.append(caller.popen(*uac, *common, stdout=out, stderr=out, cwd=work))
            code = processes[1].wait(timeout=timeout_s + 30)
            time.sleep(0.5)  # the last packets on their way
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
        "rtp": rtp_summary(
            {
                CALLER_MEDIA: _counted(caller, "OUTPUT") - before[0],
                CALLEE_MEDIA: _counted(callee, "OUTPUT") - before[1],
            },
            {CALLER_MEDIA: _counted(caller, "INPUT") - before[2], CALLEE_MEDIA: _counted(callee, "INPUT") - before[3]},
            counter.streams,
            CALLER_MEDIA,
            CALLEE_MEDIA,
        ),
        # Of what each leg received, the packets from the advertised address (the rest came from elsewhere).
        "from_advertised": {
            "caller": _counted(caller, "INPUT", 0) - before[4],
            "callee": _counted(callee, "INPUT", 0) - before[5],
        },
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


def _published_like(managed: str) -> dict[str, int]:
    """The plain Docker way to the managed container's host ports: its SIP port and every media port published
    on the same host port numbers (its server files, copied, name them in SIP headers and SDP)."""
    from docker_xms.domain.labels import host_ranges_from_labels

    attrs = client().api.inspect_container(managed)
    publish = {key: int(bound[0]["HostPort"]) for key, bound in (attrs["HostConfig"]["PortBindings"] or {}).items()}
    for low, high in host_ranges_from_labels(attrs["Config"]["Labels"]):
        publish.update({f"{port}/udp": port for port in range(low, high + 1)})
    return publish


def _turn(kind: str, ids: Mapping[str, str]) -> float:
    """Start `kind`'s container with the other stopped (both are reached at the same host ports); seconds taken."""
    began = time.monotonic()
    other = next(k for k in ids if k != kind)
    if other == "managed":
        cli("stop", ids[other], check=False)
    else:
        client().api.stop(ids[other], timeout=10)
    if kind == "managed":
        cli("start", ids[kind])
    else:
        start([ids[kind]])
    wait_booted(ids[kind], profile=PROFILE)
    return round(time.monotonic() - began, 1)


def calls(plan: CallsPlan | None = None, hogs: int = 8) -> dict[str, Any]:
    """Calls with media through the sip profile's proxy from peers outside the host, managed against plain Docker,
    under the `inside` load."""
    from lab.peer_links import Links

    from bench.media import rtpengine_threads

    plan = plan or plan_from(os.environ.get("BENCH_CALLS"))
    out: dict[str, Any] = {
        "plan": dataclasses.asdict(plan),
        "load": f"stress-ng --cpu {hogs} in the measured container's cpu cgroup (inside)",
        "scenario": (
            "caller uac_g711a.xml: INVITE, 200, ACK, SIPp's g711a.pcap (236 packets, 7 s), pause 8 s, BYE; callee "
            "uas_g711a.xml: 200 with its own SDP, the same recording played from the ACK on, to the SDP's address"
        ),
        "runs": [],
        "rounds": [],
        "containers": {},
    }
    _ensure_image()
    remove(CALLS_PREFIX)
    subnet = client().networks.get("bridge").attrs["IPAM"]["Config"][0]["Subnet"]
    links = Links(subnet, within="10.203.0.0/16")
    try:
        caller, callee = links.add("a", CALLER_MEDIA), links.add("b", CALLEE_MEDIA)
        out["caller_and_callee"] = (
            f"SIPp in namespaces of their own at {caller.address} and {callee.address}, on links whose host ends are "
            f"{caller.host_end} and {callee.host_end}, through the advertised address {links.advertised}"
        )
        managed = start_managed(
            f"{CALLS_PREFIX}managed",
            wait=True,
            extra=("--profile", PROFILE, "--ports", "dnat", "--advertise", links.advertised),
        )
        like = snapshot(managed, PROFILE)
        sip_port = int(like["attrs"]["HostConfig"]["PortBindings"]["5060/udp"][0]["HostPort"])
        publish = _published_like(managed)
        plain = create_plain(f"{CALLS_PREFIX}unmanaged", like, publish=publish)
        ids = {"managed": managed, UNMANAGED: plain}
        out["unmanaged_published_ports"] = len(publish)
        setups: dict[str, Any] = {}
        for kind, cid in ids.items():
            out["containers"].setdefault(kind, {})["first_start_s"] = _turn(kind, ids)
            setups[kind] = setup_of(cid, PROFILE)
            threads = rtpengine_threads(cid)
            out["containers"][kind].update(rtpengine_threads=threads, setup=setups[kind])
            print(f"calls {kind}: budget {setups[kind]['budget_us']} us, rtpengine threads {threads}", flush=True)
        # The ports differ on purpose: the managed media range is forwarded, the plain one's published.
        check_like_with_like(setups, apart=("published_ports",))
        out["like_with_like"] = "all but the real-time budget and how the media ports are reached"
        done: dict[str, list[dict[str, Any]]] = {kind: [] for kind in ids}
        for r in range(plan.rounds):
            for position, kind in enumerate(rotated(list(ids), r)):
                started_s = _turn(kind, ids)
                (group,) = cpu_cgroups([ids[kind]])
                limit = plan.calls / plan.rate + 120
                with host_load(hogs, limit_s=limit, cgroups=(group,)), tempfile.TemporaryDirectory() as tmp:
                    measured = place_calls((links.advertised, sip_port), caller, callee, plan, Path(tmp))
                measured.update(
                    round=r,
                    position=position,
                    kind=kind,
                    start_s=started_s,
                    sessions_after=_rtpengine_sessions(ids[kind]),
                )
                done[kind].append(measured)
                out["rounds"].append({k: v for k, v in measured.items() if k != "setup_ms"})
                s, rtp = measured["sipp"], measured["rtp"]
                p95 = nearest_rank(measured["setup_ms"], 95)
                print(
                    f"calls round {r + 1} {kind:9}: {s['attempted']} attempted, {s['answered']} answered, "
                    f"{s['failed']} failed {s['failed_because'] or ''}; at once {s['calls_at_once']} calls, "
                    f"{rtp['streams_at_once']} streams; setup p95 {p95} ms; RTP lost "
                    f"{rtp['lost_to_callee']} + {rtp['lost_to_caller']} of {rtp['sent_by_caller']} + "
                    f"{rtp['sent_by_callee']} (from the advertised address: {measured['from_advertised']}); "
                    f"jitter {rtp['jitter_ms_mean']} ms; counter drops "
                    f"{measured['counter_drops']}; {measured['seconds']} s (start {started_s} s)",
                    flush=True,
                )
        for kind, measured_rounds in done.items():
            run = pooled(kind, measured_rounds)
            run["setup_ms"] = sorted(t for m in measured_rounds for t in m["setup_ms"])
            out["runs"].append(run)
            print(
                f"calls {kind:9}: {run['attempted']} attempted, {run['answered']} answered, {run['failed']} failed; at once "
                f"{run['calls_at_once']} calls, {run['streams_at_once']} streams; "
                f"setup p50 {run['setup_ms_p50']} / p95 {run['setup_ms_p95']} ms; RTP lost {run['rtp_lost']} of "
                f"{run['sent_by_caller'] + run['sent_by_callee']}; jitter {run['jitter_ms_mean']} ms "
                f"(worst stream {run['jitter_ms_max']} ms)",
                flush=True,
            )
    finally:
        remove(CALLS_PREFIX)
        links.close()
    return out
