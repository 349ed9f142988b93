"""Markdown report with PNG plots from the benchmark results; headline ratios for the console."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT

# What the latency and media sections call their kinds, and how the report draws them.
COLORS = {"floor": "tab:grey", "managed": "tab:blue", "unmanaged": "tab:red", "hand-made": "tab:green"}
META = ("machine", "started", "finished", "paused")
HAND = "hand-made"
LAT_TARGET_US = 100
LAT_RATIO_TARGET = 20
JITTER_TARGET_MS = 0.1


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _loads(section: dict[str, Any]) -> list[str]:
    """The section's loads, idle first then as measured (the saved JSON sorts its keys)."""
    known = [name for name in ("idle", "host", "inside") if name in section["loads"]]
    return known + [name for name in section["loads"] if name not in known]


def _run(runs: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for run in runs:
        if all(run.get(k) == v for k, v in match.items()):
            return run
    return None


# --- headlines ---------------------------------------------------------------------------------------------


def latency_headlines(lat: dict[str, Any]) -> list[str]:
    """Per N and load: managed against unmanaged p99.9, with the machine's floor measured in the same rounds."""
    lines: list[str] = []
    for n in sorted({r["n"] for r in lat["runs"]}):
        for load in (x for x in _loads(lat) if x != "idle"):
            m = _run(lat["runs"], n=n, kind="managed", load=load)
            u = _run(lat["runs"], n=n, kind="unmanaged", load=load)
            h = _run(lat["runs"], n=n, kind="hand-made", load=load)
            f = _run(lat["runs"], n=n, kind="floor", load=load)
            if not (m and u):
                continue
            mp, up = m["pooled"]["p999_us"], u["pooled"]["p999_us"]
            ratio = up / max(mp, 1.0)
            ok = mp <= LAT_TARGET_US and ratio >= LAT_RATIO_TARGET
            hand = ""
            if h:
                hp = h["pooled"]["p999_us"]
                hand = f"; hand-made (plain docker run, same budget) {hp:.0f} us = {hp / max(mp, 1.0):.2f}x managed"
            floor = ""
            if f:
                fp = f["pooled"]["p999_us"]
                floor = f"; the host itself, same probe and priority: {fp:.0f} us"
                if not ok and fp > LAT_TARGET_US:
                    floor += " (itself above the target)"
            lines.append(
                f"wake-up p99.9, load {load}, N={n}: managed {mp:.0f} us vs unmanaged {up:.0f} us = {ratio:.1f}x "
                f"(target <= {LAT_TARGET_US} us and >= {LAT_RATIO_TARGET}x: {'met' if ok else 'NOT met'}){hand}{floor}"
            )
    return lines


def headlines(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lat = results.get("latency")
    if lat and "loads" in lat:
        lines += latency_headlines(lat)
    media = results.get("media")
    if media and "loads" in media:
        lines += media_headlines(media)
    ports = results.get("swarm-ports")
    if ports and "kinds" in ports:
        from bench.swarm_ports import headlines as swarm_ports_headlines

        lines += swarm_ports_headlines(ports)
    return lines


def _fifo_tool(media: dict[str, Any]) -> str | None:
    return next((r["tool"] for r in media["runs"] if r["tool"].startswith("SCHED_FIFO")), None)


def media_headlines(media: dict[str, Any]) -> list[str]:
    """Jitter added by the relay path, per kind and load, with the measuring tool at SCHED_FIFO."""
    lines: list[str] = []
    tool = _fifo_tool(media)
    for load in _loads(media):
        found: dict[str, dict[str, Any]] = {}
        for kind in ("managed", "unmanaged", "hand-made"):
            r = _run(media["runs"], kind=kind, load=load, tool=tool) if tool else None
            r = r or _run(media["runs"], kind=kind, load=load)
            if not r:
                continue
            found[kind] = r
            verdict = ""
            if kind == "managed" and load != "idle":
                met = r["added_jitter_ms"] <= JITTER_TARGET_MS
                verdict = f" (target <= {JITTER_TARGET_MS} ms: {'met' if met else 'NOT met'})"
            lines.append(
                f"RTP jitter added by the relay path, load {load}, {kind} (tool {r['tool']}): "
                f"{r['added_jitter_ms']:+.3f} ms (relay {r['relay']['jitter_ms']:.3f} - direct "
                f"{r['direct']['jitter_ms']:.3f}); lost {r['relay']['lost']}, late {r['relay']['late']}{verdict}"
            )
        m = found.get("managed")
        if load != "idle" and m and m["relay"]["jitter_ms"] > 0:
            ratios = [
                f"{kind} / managed = {found[kind]['relay']['jitter_ms'] / m['relay']['jitter_ms']:.1f}x"
                for kind in ("unmanaged", "hand-made")
                if kind in found
            ]
            if ratios:
                lines.append(f"relayed RTP jitter, load {load}: {', '.join(ratios)}")
    return lines


# --- plots -------------------------------------------------------------------------------------------------


def _plot_latency(lat: dict[str, Any], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = lat["bin_edges_us"]
    counts = sorted({r["n"] for r in lat["runs"]})
    loads = _loads(lat)
    fig, axes = plt.subplots(
        len(loads), len(counts), figsize=(5 * len(counts), 3.6 * len(loads)), sharex=True, sharey=True, squeeze=False
    )
    # Wide enough for the latest wake-up of any run (the bins end at 1 s).
    right = max([1e4] + [edges[i + 1] for r in lat["runs"] for i, c in enumerate(r["histogram"]) if c])
    for row, load in enumerate(loads):
        for col, n in enumerate(counts):
            ax = axes[row][col]
            for run in (r for r in lat["runs"] if r["n"] == n and r["load"] == load):
                hist = run["histogram"]
                total = sum(hist)
                # Complementary CDF: the fraction of wake-ups later than x (x = each bin's upper edge).
                xs, ys, above = [], [], total
                for i, c in enumerate(hist):
                    above -= c
                    xs.append(edges[i + 1])
                    ys.append(max(above / total, 0.5 / total))
                policy = run["containers"][0]["policy"]
                label = f"{run['kind']} ({policy}): p99.9 {run['pooled']['p999_us']:.0f} us"
                ax.step(xs, ys, where="post", color=COLORS.get(run["kind"], "black"), label=label)
            ax.axvline(LAT_TARGET_US, color="grey", linewidth=0.8, linestyle="--")
            ax.axhline(1e-3, color="grey", linewidth=0.5, linestyle=":")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(1, right)
            ax.set_title(f"load {load}, {n} container{'s' if n > 1 else ''} at once", fontsize=9)
            ax.legend(fontsize=7, loc="lower left")
            ax.grid(True, which="both", alpha=0.2)
        axes[row][0].set_ylabel("fraction later than x")
    for ax in axes[-1]:
        ax.set_xlabel("wake-up lateness (us)")
    fig.suptitle(
        f"Wake-up latency, {lat['interval_us']} us period, {lat['duration_s']:g} s per probe; floor = the same probe "
        "on the host, outside any container"
    )
    fig.tight_layout()
    path = directory / "latency_ccdf.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path.name]


def _running_jitter(run: dict[str, Any], leg: str) -> list[float]:
    """A->B's running jitter of a run, its rounds one after the other (each round starts its estimate afresh)."""
    if "rounds" in run:
        return [v for r in run["rounds"] for v in r[leg]["a_to_b"]["running_jitter_ms"]]
    return list(run[leg]["a_to_b"]["running_jitter_ms"])


def _plot_jitter(media: dict[str, Any], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tool = _fifo_tool(media)
    loads = _loads(media)
    fig, axes = plt.subplots(len(loads), 1, figsize=(10, 3.3 * len(loads)), sharex=True, squeeze=False)
    for ax, load in zip((row[0] for row in axes), loads, strict=True):
        for kind in ("managed", "unmanaged", "hand-made"):
            color = COLORS[kind]
            run = _run(media["runs"], kind=kind, load=load, tool=tool) or _run(media["runs"], kind=kind, load=load)
            if not run:
                continue
            for leg, style, what in (("relay", "-", "relayed A->B"), ("direct", ":", "direct loopback")):
                series = _running_jitter(run, leg)
                ax.plot(
                    [i * media["ptime_ms"] / 1000 for i in range(len(series))],
                    series,
                    color=color,
                    linestyle=style,
                    linewidth=1.0 if leg == "relay" else 0.8,
                    label=f"{kind}, {what} (final {series[-1]:.3f} ms)" if series else kind,
                )
        ax.axhline(JITTER_TARGET_MS, color="grey", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("running RFC 3550 J (ms)")
        ax.set_title(f"load {load}: {media['loads'][load]}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.2)
    axes[-1][0].set_xlabel("stream time (s)")
    joined = f", {media['rounds']} rounds joined" if media.get("rounds") else ""
    fig.suptitle(f"RTP jitter over time, 20 ms packets{joined}, measuring tool at {tool or 'SCHED_OTHER'}")
    fig.tight_layout()
    path = directory / "jitter_over_time.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path.name]


# --- markdown ----------------------------------------------------------------------------------------------


def _latency_md(lat: dict[str, Any]) -> list[str]:
    lines = [
        "## Wake-up latency",
        "",
        f"A periodic wake-up every {lat['interval_us']} us, {lat['duration_s']:g} s per probe in {lat['rounds']} "
        "rounds that rotate the order of the kinds; probes run concurrently in all N "
        "containers. Lateness past each deadline, in us. Managed = docker-xms container with a real-time budget, "
        f"probe at SCHED_FIFO {lat['priority']} (the rtpengine profile's priority). Unmanaged = the same image under "
        "plain `docker run` (SYS_NICE, no budget): there the kernel refuses SCHED_FIFO, so the probe runs at "
        "SCHED_OTHER, which is what an unmanaged media server gets on this host. Hand-made = the same image under "
        "plain `docker run --cpu-rt-runtime=<the managed containers' share> --cap-add SYS_NICE`, after raising the "
        "engine's parent cgroup by hand: what a careful administrator builds without docker-xms; the probe runs at "
        f"SCHED_FIFO {lat['priority']}. Floor = the same probe on the host, "
        "outside any container, at the same priority: what this machine gives any process. Steal = CPU time the "
        "hypervisor took from the vCPUs during the probe.",
        "",
        *_setups_md(lat),
        *[f"- load `{name}`: {lat['loads'][name]}" for name in _loads(lat)],
        "",
    ]
    if lat.get("fifo_refused"):
        lines += [f"SCHED_FIFO in the unmanaged container, via `measure_wakeups`: *{lat['fifo_refused']}*", ""]
    lines += ["Pooled over the N containers:", ""]
    rows = []
    for r in lat["runs"]:
        p = r["pooled"]
        budgets = sorted({c["budget_us"] for c in r["containers"] if c["budget_us"] is not None})
        rows.append(
            [
                r["n"],
                r["load"],
                r["kind"],
                r["containers"][0]["policy"],
                p["samples"],
                p["p50_us"],
                p["p99_us"],
                p["p999_us"],
                p["max_us"],
                r["steal_ms"],
                ", ".join(str(b) for b in budgets) or "-",
            ]
        )
    header = ["N", "load", "kind", "policy", "samples", "p50", "p99", "p99.9", "max", "steal ms", "rt budget us"]
    lines += _table(header, rows)
    lines += ["Per container:", ""]
    rows = [
        [
            r["n"],
            r["load"],
            r["kind"],
            c["container"],
            c["mlocked"],
            c["samples"],
            c["p50_us"],
            c["p99_us"],
            c["p999_us"],
            c["max_us"],
        ]
        for r in lat["runs"]
        for c in r["containers"]
    ]
    lines += _table(["N", "load", "kind", "where", "mlocked", "samples", "p50", "p99", "p99.9", "max"], rows)
    return lines


def _setups_md(section: dict[str, Any]) -> list[str]:
    """How the kinds were set up: the same in everything but the real-time budget (checked before measuring)."""
    per_n = section.get("setups") or ({"1": section["containers"]} if "containers" in section else {})
    if not any(HAND in kinds for kinds in per_n.values()):
        return []
    lines = [
        "The N hand-made containers started first, each with pool / (W + 2N) (W = weight of other managed containers "
        "running beside the benchmark), in room docker-xms gave up for them; then docker-xms's N, which counted the "
        "hand-made ones as other holders and gave its own the same budget each. Every kind was checked to have the "
        "same published ports, healthcheck, mounts, capabilities, sysctls, stop signal, image and server "
        "configuration before it was measured.",
        "",
    ]
    rows = []
    for n, kinds in per_n.items():
        for kind, info in kinds.items():
            setup = info.get("setup", info)
            if not isinstance(setup, dict) or "published_ports" not in setup:
                continue
            rows.append(
                [
                    n,
                    kind,
                    len(setup["published_ports"]),
                    "yes" if setup["healthcheck"].get("Test") else "no",
                    setup["cpu_rt_runtime_stored_us"],
                    setup["budget_us"] if setup["budget_us"] is not None else "-",
                ]
            )
    lines += _table(["N", "kind", "published ports", "healthcheck", "--cpu-rt-runtime us", "kernel budget us"], rows)
    hands = [kinds["parent_by_hand"] for kinds in per_n.values() if "parent_by_hand" in kinds]
    hands += [section["parent_by_hand"]] if "parent_by_hand" in section else []
    for hand in hands:
        lines.append(
            f"- by hand: `{hand['parent']}` cpu.rt_runtime_us {hand['before_us']:,} -> {hand['set_us']:,} us, "
            "given back afterwards"
            + (
                f"; other managed containers running beside: {', '.join(hand['other_managed'])}"
                if hand.get("other_managed")
                else ""
            )
        )
    return [*lines, ""] if hands else lines


def _media_md(media: dict[str, Any]) -> list[str]:
    lines = [
        "## Media: RTP relayed by rtpengine",
        "",
        f"Two legs on the host send {media['packets']} PCMU packets every {media['ptime_ms']} ms each, A->B and B->A, "
        "through rtpengine in the container (offer/answer over ng at the container's address). The receivers "
        "compute RFC 3550 interarrival jitter (mean of the two directions), lost packets and late packets (arriving "
        "more than 40 ms after their scheduled time). Sender and receiver are Python threads on the host, so host "
        "load hits them too: the same two streams are also sent directly over 127.0.0.1 without a relay, right "
        "after, under the same conditions; relay minus direct jitter is the jitter added by the relay path. "
        "`tool` is the scheduling of the measuring process itself. Managed = docker-xms; unmanaged = plain "
        "`docker run`, no budget; hand-made = plain `docker run --cpu-rt-runtime` with the managed share, the "
        "parent raised by hand.",
        "",
        *[f"- load `{name}`: {media['loads'][name]}" for name in _loads(media)],
        "",
    ]
    if media.get("rounds"):
        lines += [
            f"The three containers ran side by side; under each load they were measured in {media['rounds']} rounds "
            f"of {media['packets_per_round']} packets per direction, the order rotating each round. Jitter is the "
            "mean of the rounds' RFC 3550 estimates (each round listed), lost and late packets their sum.",
            "",
        ]
    lines += _setups_md(media)
    rows = []
    for kind, info in media.get("containers", {}).items():
        threads = info["rtpengine_threads"]
        rows.append([kind, info["budget_us"], threads["fifo"], threads["other"]])
    lines += _table(["container", "rt budget us", "rtpengine threads SCHED_FIFO", "SCHED_OTHER"], rows)
    rows = []
    for r in media["runs"]:
        relay, direct = r["relay"], r["direct"]
        delay = relay["delay_p99_ms"] if "delay_p99_ms" in relay else relay["a_to_b"]["delay_p99_ms"]
        per_round = " / ".join(f"{x['relay']['jitter_ms']:.3f}" for x in r.get("rounds", []))
        rows.append(
            [
                r["kind"],
                r["load"],
                r["tool"],
                relay["jitter_ms"],
                per_round or "-",
                direct["jitter_ms"],
                r["added_jitter_ms"],
                delay,
                f"{relay['lost']}/{relay.get('sent', 2 * media['packets'])}",
                relay["late"],
                direct["lost"],
                direct["late"],
            ]
        )
    lines += _table(
        [
            "container",
            "host",
            "tool",
            "relay jitter ms",
            "relay jitter per round ms",
            "direct jitter ms",
            "added ms",
            "relay delay p99 ms",
            "relay lost",
            "relay late",
            "direct lost",
            "direct late",
        ],
        rows,
    )
    return lines


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3 if abs(value) < 10 else 1)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _generic_md(name: str, data: Any) -> list[str]:
    lines = [f"## {name}", ""]
    if isinstance(data, dict):
        rows = [[k, json.dumps(_rounded(v)) if isinstance(v, dict | list) else v] for k, v in sorted(data.items())]
        lines += _table(["key", "value"], rows)
    else:
        lines += [f"`{json.dumps(data)}`", ""]
    return lines


def _held(value: Any) -> str:
    if value is None:
        return "none"
    return f"{value} us (host-wide, for every kind alike, as `docker-xms agent --cpu-latency-us {value}` holds it)"


def _where(raw: Path | None) -> str:
    if raw is None:
        return "not saved"
    try:
        return f"`{raw.resolve().relative_to(ROOT)}`"
    except ValueError:
        return f"`{raw}`"


def write_report(results: dict[str, Any], raw: Path | None = None, directory: Path = RESULTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    machine = results.get("machine", {})
    paused = results.get("paused") or []
    lines = [
        "# docker-xms benchmark report",
        "",
        f"- date: {results.get('started', '?')}" + (f" to {results['finished']}" if results.get("finished") else ""),
        f"- raw results: {_where(raw)} (every figure below comes from this file)",
        "- stopped for the run and started again after: "
        + (", ".join(paused) + " (a managed container that holds a share of the pool)" if paused else "nothing"),
        f"- kernel: {machine.get('kernel', '?')}, CPUs: {machine.get('cpus', '?')}, "
        f"Python {machine.get('python', '?')}",
        f"- cpuidle driver: {machine.get('cpuidle_driver') or 'none'}; CPU wake-up latency limit held during the "
        f"run: {_held(machine.get('cpu_latency_held_us'))}",
        "- command: `python -m bench " + " ".join(k for k in results if k not in META) + "`",
        "",
    ]
    heads = headlines(results)
    if heads:
        lines += ["## Headlines", "", *[f"- {h}" for h in heads], ""]
    for name, data in results.items():
        if name in META:
            continue
        if name == "latency":
            lines += _latency_md(data)
            lines += [f"![wake-up latency]({f})" for f in _plot_latency(data, directory)] + [""]
        elif name == "media":
            lines += _media_md(data)
            lines += [f"![jitter over time]({f})" for f in _plot_jitter(data, directory)] + [""]
        elif name == "swarm-ports" and "kinds" in data:
            from bench.swarm_ports import table_md

            lines += ["## swarm-ports", "", *table_md(data), "", *_generic_md("swarm-ports, raw", data)[2:]]
        else:
            lines += _generic_md(name, data)
    path = directory / "report.md"
    path.write_text("\n".join(lines))
    return path
