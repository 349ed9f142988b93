"""What the host held before the suite ran, and what the kernel's rule says budgets must be.

The suite runs beside whatever already runs on the engine. Before it starts, every container's state,
start time, real-time budget and docker-xms rules are recorded; the README's demo container is stopped
for the run (it holds the 1:1 host ports the tests need) and started again, with its budget, at the end.
Afterwards every other container must be exactly as it was.

Expected budgets are computed here from the cgroup files and the engine's labels by the kernel's rule
(what the root allows, less what the engine parent's siblings and the parent's unmanaged children
hold, shared by weight and rounded down), never from docker-xms's own reading of the state.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from docker_xms.domain.labels import unreadable

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
PARENT = CPU_ROOT / "docker"
PERIOD_US = 1_000_000
DEMO = "docker-xms-demo"
MANAGED = "io.docker-xms.managed"
WEIGHT = "io.docker-xms.rt-weight"
MODE = "io.docker-xms.mode"
TEST_LABEL = "io.docker-xms.test"


def _runtime(group: Path) -> int | None:
    try:
        runtime = int((group / "cpu.rt_runtime_us").read_text())
        period = int((group / "cpu.rt_period_us").read_text())
    except (OSError, ValueError):
        return None
    if runtime < 0:
        return PERIOD_US
    return -(-runtime * PERIOD_US // period)


def _children(group: Path) -> dict[str, int]:
    out = {}
    for entry in group.iterdir() if group.is_dir() else ():
        runtime = _runtime(entry) if entry.is_dir() else None
        if runtime is not None:
            out[entry.name] = runtime
    return out


def running_managed(client: Any) -> dict[str, int]:
    """Running managed containers and their weights (the label, 1 when absent).

    One whose weight label is not a whole number from 1 to 100, or whose other labels cannot be read,
    is no member: docker-xms leaves its budget as it is, like any other holder's.
    """
    found = {}
    for c in client.containers.list(filters={"label": f"{MANAGED}=true"}):
        text = c.labels.get(WEIGHT, "1")
        if text.isdigit() and int(text) >= 1 and unreadable(c.labels) is None:
            found[c.id] = int(text)
    return found


def foreign_runtime(client: Any) -> int:
    """What the engine parent's children that are no running managed container hold: they keep it."""
    managed = running_managed(client)
    return sum(v for name, v in _children(PARENT).items() if name not in managed)


def kernel_pool(client: Any) -> int:
    """What the running managed containers share, by the kernel's rule for the engine's parent /docker."""
    root = _runtime(CPU_ROOT) or 0
    siblings = sum(v for name, v in _children(CPU_ROOT).items() if name != PARENT.name)
    pool = max(0, root - siblings - foreign_runtime(client))
    cap = os.environ.get("DOCKER_XMS_RT_POOL_US")
    return min(pool, int(cap)) if cap else pool


def fair_shares(client: Any) -> dict[str, int]:
    """Each running managed container's budget by the kernel's rule: floor(pool * weight / total weight)."""
    managed = running_managed(client)
    total = sum(managed.values())
    pool = kernel_pool(client)
    return {cid: pool * weight // total for cid, weight in managed.items()} if total else {}


def one_to_one_holder(client: Any) -> str | None:
    """A running 1:1 container that the suite did not start: 1:1 tests cannot run beside it."""
    for c in client.containers.list(filters={"label": f"{MODE}=one-to-one"}):
        if TEST_LABEL not in c.labels and c.name != DEMO and not _test_name(c.name):
            return str(c.name)
    return None


_TEST_PREFIXES = ("lc-", "rtb-", "mp-", "agent-test-", "rtp-", "probe-", "pipe-", "nf-", "bench-")


def _test_name(name: str) -> bool:
    return name.startswith(_TEST_PREFIXES)


def rule_lines(short_id: str) -> list[str]:
    """docker-xms's rules that name a container, in every table it writes."""
    lines = []
    for table in ("nat", "filter", "raw"):
        done = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False)
        lines += [f"{table} {line}" for line in done.stdout.splitlines() if f"docker-xms:{short_id}:" in line]
    return sorted(lines)


@dataclass(frozen=True)
class Found:
    """One container as the suite found it."""

    name: str
    status: str
    started_at: str
    restart_count: int
    stored_budget: int
    budget: int | None
    rules: tuple[str, ...]


def _found(client: Any, cid: str) -> Found:
    attrs = client.api.inspect_container(cid)
    state = attrs["State"]
    running = bool(state.get("Running"))
    return Found(
        name=attrs["Name"].lstrip("/"),
        status=state.get("Status", ""),
        started_at=state.get("StartedAt", ""),
        restart_count=int(attrs.get("RestartCount") or 0),
        stored_budget=int(attrs["HostConfig"].get("CpuRealtimeRuntime") or 0),
        budget=_runtime(PARENT / cid) if running else None,
        rules=tuple(rule_lines(cid[:12])),
    )


def snapshot(client: Any) -> dict[str, Found]:
    return {c.id: _found(client, c.id) for c in client.containers.list(all=True)}


def differences(client: Any, before: dict[str, Found], restarted: set[str]) -> list[str]:
    """How the containers found before differ now; those in `restarted` may have a new start time."""
    problems = []
    for cid, was in before.items():
        try:
            now = _found(client, cid)
        except Exception as exc:  # gone, or the engine does not answer: both are differences
            problems.append(f"{was.name}: {type(exc).__name__}: {exc}")
            continue
        expected = was
        if cid in restarted:
            # Started again: a new start time, and maybe another address in its rules; as many rules.
            if len(now.rules) != len(was.rules):
                problems.append(f"{was.name}: {len(was.rules)} rules before, {len(now.rules)} now")
            now = Found(now.name, now.status, was.started_at, was.restart_count, now.stored_budget, now.budget, ())
            expected = Found(was.name, was.status, was.started_at, was.restart_count, was.stored_budget, was.budget, ())
        if was.status != "running" and now.status == was.status and was.rules and not now.rules:
            # Rules left behind by a container that had stopped before the run (its agent died with
            # it, say): docker-xms's reconciling takes them away, as it must, since the address they
            # name can go to another container. They were docker-xms's own, and stale.
            expected = replace(expected, rules=())
        if now != expected:
            problems.append(f"{was.name}: was {expected}, now {now}")
    return problems
