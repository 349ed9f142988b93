"""`docker-xms rt ...`: real-time budgets."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from docker_xms.cli.render import console, print_json
from docker_xms.domain.rt_mode import PER_GROUP
from docker_xms.domain.watchdog import fair_server_text, stops_text, watchdog_text

if TYPE_CHECKING:
    from docker_xms.usecases.rt import RtHost, Skipped


def _open() -> RtHost:
    from docker_xms.cli import context

    return context.host().rt


@click.group("rt")
def rt() -> None:
    """Real-time CPU budgets: status, rebalance, verify, doctor, probe."""


@rt.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(as_json: bool) -> None:
    """Host mode, the pool, the engine's parent, and each container's budget and share."""
    from docker_xms.usecases.rt import read_state

    state = read_state(_open())
    if as_json:
        print_json(asdict(state))
        return
    console.print(
        f"Host: [bold]{state.mode}[/] real-time scheduling, cgroup v{state.cgroup_version}, "
        f"kernel limit {state.global_runtime_us} us per {state.global_period_us} us"
        + (f"; fair server reserve {fair_server_text(state.fair_server_ns)}" if state.fair_server_ns else "")
    )
    if state.media_cpus:
        console.print(
            f"CPU sets: housekeeping CPU {state.housekeeping_cpus or '-'}; media CPU {state.media_cpus}, "
            "divided among the media containers"
        )
    if state.mode != PER_GROUP and not state.capacity_us:
        console.print(
            "No per-container budgets on this host: containers with CAP_SYS_NICE may use SCHED_FIFO "
            "within the kernel's global limit."
        )
    else:
        console.print(
            f"Parent {state.parent}: {state.parent_runtime_us} us; capacity {state.capacity_us} us "
            f"(other groups beside it hold {state.siblings_us} us); foreign containers hold "
            f"{state.foreign_us} us; pool {state.pool_us} us"
        )
    table = Table(
        "container", "id", "weight", "budget (kernel)", "budget (engine)", "share", "cpus", "watchdog", "origin"
    )
    for h in state.managed:
        table.add_row(
            h.name,
            h.id[:12],
            str(h.weight),
            f"{h.runtime_us:,}",
            f"{h.engine_runtime_us:,}",
            f"{h.share:.1%}",
            h.cpus or "all",
            watchdog_text(h.watchdog_us) + stops_text(h.watchdog_stops),
            h.origin,
        )
    skipped = {s.id for s in state.skipped}
    for h in state.foreign:
        kind = "labels unreadable" if h.id in skipped else "not managed"
        table.add_row(
            f"{h.name} [dim]({kind})[/]",
            h.id[:12],
            "-",
            f"{h.runtime_us:,}",
            f"{h.engine_runtime_us:,}",
            "-",
            "-",
            "-",
            "-",
        )
    if state.managed or state.foreign:
        console.print(table)
    else:
        console.print("No real-time containers.")
    _print_skipped(state.skipped)


def _print_skipped(skipped: Sequence[Skipped]) -> None:
    for s in skipped:
        console.print(f"[yellow]{escape(s.sentence())}[/]", soft_wrap=True)


@rt.command("rebalance")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def rebalance_cmd(as_json: bool) -> None:
    """Share the pool again among the running managed containers, and mend port rules."""
    from docker_xms.cli import context
    from docker_xms.usecases.reconcile import reconcile
    from docker_xms.usecases.root import require_root

    require_root()
    host = context.host()
    result = reconcile(host.rt, host.netfilter).budgets
    if as_json:
        print_json(
            {
                "pool_us": result.pool_us,
                "parent_us": result.parent_us,
                "budgets": dict(result.budgets),
                "writes": [asdict(w) for w in result.writes],
                "per_group": result.per_group,
                "skipped": [asdict(s) for s in result.skipped],
            }
        )
        return
    _print_skipped(result.skipped)
    if not result.per_group:
        console.print("No per-container budgets on this host; nothing to rebalance.")
        return
    console.print(
        f"Pool {result.pool_us:,} us shared by {len(result.budgets)} container(s); {len(result.writes)} write(s)."
    )
    for key, value in result.budgets.items():
        console.print(f"  {result.names.get(key, key)}: {value:,} us")


@rt.command("verify")
@click.argument("container")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify_cmd(container: str, as_json: bool) -> None:
    """Prove inside CONTAINER that SCHED_FIFO is allowed and list its real-time threads (exit 1 if not)."""
    from docker_xms.usecases.rt import VERIFY_WAIT_S, verify

    result = verify(_open(), container, timeout_s=VERIFY_WAIT_S)
    if as_json:
        print_json({**asdict(result), "ok": result.ok})
    else:
        mark = "[green]yes[/]" if result.fifo_allowed else "[red]no[/]"
        console.print(f"{result.name}: SCHED_FIFO allowed: {mark} ({result.fifo_detail})")
        if result.mode == PER_GROUP:
            console.print(f"Budget of its cgroup: {result.budget_us:,} us per second")
        table = Table("pid", "tid", "thread", "policy", "priority", "cgroup budget")
        for t in result.rt_threads:
            budget = "-" if t.cgroup_runtime_us is None else f"{t.cgroup_runtime_us:,}"
            table.add_row(str(t.pid), str(t.tid), t.comm, t.policy, str(t.priority), budget)
        console.print(f"{len(result.rt_threads)} of {result.threads_total} threads run real-time")
        if result.rt_threads:
            console.print(table)
        for group in result.zero_budget_groups:
            console.print(f"[red]Real-time threads sit in {group}, whose budget is 0.[/]")
    if not result.ok:
        sys.exit(1)


@rt.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor_cmd(as_json: bool) -> None:
    """Say in plain words whether real-time will work on this host, and what to change if not."""
    from docker_xms.domain.doctor import verdict
    from docker_xms.usecases.rt import doctor

    findings = doctor(_open())
    works = verdict(findings)
    if as_json:
        print_json({"real_time_works": works, "findings": [asdict(f) for f in findings]})
    else:
        marks = {"ok": "[green]ok[/]  ", "warn": "[yellow]warn[/]", "fail": "[red]fail[/]"}
        for f in findings:
            console.print(f"{marks[f.level]} {f.message}")
            if f.fix and f.level != "ok":
                console.print(f"      [dim]fix:[/] {f.fix}")
        console.print(
            "Real-time scheduling will work in containers."
            if works
            else "Real-time scheduling will NOT work in containers until the above is fixed."
        )
    if not works:
        sys.exit(1)


@rt.command("probe")
@click.argument("container", required=False)
@click.option("--host", "on_host", is_flag=True, help="Probe the host itself, outside any container: the floor.")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="How long to measure.")
@click.option("--interval-us", type=int, default=1000, show_default=True, help="Wake-up period.")
@click.option(
    "--priority",
    type=int,
    default=None,
    help="SCHED_FIFO priority (default: the profile's real-time priority; 0 for SCHED_OTHER).",
)
@click.option("--tool", type=click.Choice(["auto", "cyclictest", "probe"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def probe_cmd(
    container: str | None,
    on_host: bool,
    seconds: float,
    interval_us: int,
    priority: int | None,
    tool: str,
    as_json: bool,
) -> None:
    """Measure periodic wake-up latency inside CONTAINER at the media server's priority.

    With --host instead of a container, the same probe runs on the host at the same priority: what this machine
    gives any process, to compare containers against.
    """
    from docker_xms.errors import BadInput

    if (container is None) == (not on_host):
        raise BadInput("Name a container to probe, or give --host to probe the host itself (not both).")
    if on_host:
        from docker_xms.cli import context
        from docker_xms.usecases.probe import probe_host

        name = "host"
        with console.status(f"Measuring wake-ups on the host for {seconds:.0f} s"):
            result = probe_host(priority, interval_us, seconds, tool=tool, profile_dirs=context.settings().profile_dirs)
    else:
        from docker_xms.cli import context
        from docker_xms.usecases.probe import probe_container

        with console.status(f"Measuring wake-ups in {container} for {seconds:.0f} s"):
            name, result = probe_container(
                context.engine(), str(container), priority, interval_us, seconds, tool, context.settings().profile_dirs
            )
    if as_json:
        print_json({"target": name, **asdict(result)})
        return
    console.print(
        f"{name}: {result.samples} wake-ups every {result.interval_us} us at {result.policy} "
        f"{result.priority} ({result.tool})"
    )
    console.print(
        f"  late by p50 {result.p50_us:.0f} us, p99 {result.p99_us:.0f} us, "
        f"p99.9 {result.p999_us:.0f} us, max {result.max_us:.0f} us"
    )
    if result.steal_ms:
        console.print(
            f"  [dim]steal: the hypervisor took {result.steal_ms:.0f} ms of CPU from this machine meanwhile[/]"
        )
    if result.note:
        console.print(f"  [dim]{result.note}[/]")
