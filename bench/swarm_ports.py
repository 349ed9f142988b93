"""Benchmark section swarm-ports: a 6-replica rtpengine service's 1,000 media ports on the 3-node lab swarm.

The same service (docker-xms/rtpengine, the demo profile: media 30000-30999/udp in the container, ng on 2223/udp)
is deployed three ways into the same lab (lab/swarm.py), one after the other, torn down between:

- docker-xms: the stack from `docker-xms compose rtpengine --replicas 6 --ports dnat --for stack`, with the
  docker-xms agent as a global service; each node's agent adds one DNAT rule per task for its whole range.
- ingress: the same service without docker-xms's labels and with no agent, its 1,000 ports published by Swarm's
  routing mesh (`mode: ingress`, 30000-30999 on every node, shared by all replicas).
- host: the same, published `mode: host`: a node holds one task's 1,000 ports, so 3 of the 6 replicas can run.

Per kind, on each node before and after (after every task is reachable, or the time limit, plus SETTLE_S):
rules are the `-A` lines of `iptables-save` (every table) and the IPVS entries of /proc/net/ip_vs, counted in
the node's own network namespace and in every namespace its engine keeps under /run/docker/netns (the ingress
sandbox, the load balancers, each task's sandbox); processes are the node's `ps -e` (tasks included, they run in
its PID namespace) and among them docker-proxy; memory is the node container's memory cgroup plus its tasks'
cgroup parent (/<node>), usage and RSS. The agent is started after the "before" reading, so docker-xms's figures
include it. Each node pulls the image first, so no kind pays for the pull.

Reachable: from `docker stack deploy` until every task that can run (6, or 3 in host mode) answers an ng ping on
its control port (sent from the node's network namespace to the task's bridge address: the ng port is not
published) and relays RTP sent from this machine to one of the call's media ports at its node's address (the
task's own forward for docker-xms, the published port for Swarm), back to this machine. Through the routing mesh
a flow reaches whichever replica IPVS picks: each attempt uses a fresh source port, up to MESH_FLOWS per check,
and the flows it took are recorded. One round per kind (2 vCPUs); BENCH_SWARM_PORTS="cap_s=N,settle_s=N".

The lab takes real-time room and CPU: the section holds the tests' lock (/tmp/docker-xms-tests.lock) while it
exists, or runs inside a `flock` of it: `flock /tmp/docker-xms-tests.lock .venv/bin/python -m bench swarm-ports`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lab.swarm import (
    AGENT_SERVICE,
    forwards,
    in_netns,
    push,
    start_agent_service,
    swarm_lab,
    task_states,
    tasks_on,
)

from bench.common import cli, client, plan_from_setting
from docker_xms.adapters.cgroups import kernel_config

KINDS = ("docker-xms", "ingress", "host")
STACK = "ports"
SERVICE = f"{STACK}_rtpengine"
REPLICAS = 6
RT_MS = 30
MEDIA_FIRST, MEDIA_LAST = 30000, 30999
AGENT_IMAGE = "docker-xms/agent:latest"
RTPENGINE_IMAGE = os.environ.get("DOCKER_XMS_RTPENGINE_IMAGE", "docker-xms/rtpengine:latest")
MESH_FLOWS = 2 * REPLICAS
MEMORY = Path("/sys/fs/cgroup/memory")
MEMORY_FLOOR_MB = 3072
TESTS_LOCK = Path("/tmp/docker-xms-tests.lock")
# Every network namespace a node's engine keeps, and its own: the rules and IPVS entries of each, marked
# from inside it with the namespace's identity (the engine keeps the node's own one there too, as "default"),
# so that a namespace is counted once and a stale file nsenter cannot enter is not counted at all.
DUMP = (
    'for ns in self /run/docker/netns/*; do if [ "$ns" = self ]; then echo "== self $(readlink /proc/self/ns/net)"; '
    'iptables-save; cat /proc/net/ip_vs 2>/dev/null; else nsenter --net="$ns" sh -c '
    '\'echo "== $0 $(readlink /proc/self/ns/net)"; iptables-save; cat /proc/net/ip_vs 2>/dev/null\' "$ns" '
    "2>/dev/null; fi; done; true"
)


@dataclass(frozen=True)
class Plan:
    cap_s: int = 240
    settle_s: int = 10


# --- pure: what the nodes print, counted ----------------------------------------------------------------


def _where(namespace: str) -> str:
    """Whose a namespace is: the node's own, a container's sandbox (12 hex digits), or the routing mesh's (the rest:
    the ingress sandbox, load balancers, overlay networks)."""
    name = namespace.rsplit("/", 1)[-1]
    if name == "self":
        return "node"
    return "containers" if re.fullmatch(r"[0-9a-f]{12}", name) else "mesh"


def count_rules(dump: str) -> dict[str, int]:
    """Namespaces, iptables rules (`-A` lines), apart by whose namespace, and IPVS services and servers in a DUMP.

    A namespace seen again under another name (the node's own, which the engine keeps as "default") counts once.
    """
    out = {"namespaces": 0, "iptables_rules": 0, "ipvs_services": 0, "ipvs_servers": 0}
    out |= {f"rules_{where}": 0 for where in ("node", "mesh", "containers")}
    where, seen, again = "node", set(), False
    for line in dump.splitlines():
        if line.startswith("== "):
            name, _, identity = line[3:].strip().partition(" ")
            again = bool(identity) and identity in seen
            seen.add(identity)
            where = _where(name)
            out["namespaces"] += not again
        elif again:
            continue
        elif line.startswith("-A "):
            out["iptables_rules"] += 1
            out[f"rules_{where}"] += 1
        elif line.split(" ", 1)[0] in ("TCP", "UDP", "SCTP", "FWM"):
            out["ipvs_services"] += 1
        elif line.lstrip().startswith("-> ") and not line.lstrip().startswith("-> RemoteAddress"):
            out["ipvs_servers"] += 1
    return out


def count_processes(names: str) -> dict[str, int]:
    """Processes and docker-proxy processes in `ps -e -o comm=` output."""
    rows = [line.strip() for line in names.splitlines() if line.strip()]
    return {"processes": len(rows), "docker_proxy": sum(1 for r in rows if r == "docker-proxy")}


def memory_of(stat: str, usage: str) -> dict[str, int]:
    """A memory cgroup's usage and RSS (its whole subtree: the hierarchy is on) in bytes."""
    values = dict(line.split() for line in stat.splitlines() if line.count(" ") == 1)
    return {"usage": int(usage), "rss": int(values.get("total_rss", 0))}


def publish(compose: str, mode: str | None) -> str:
    """The stack file with docker-xms's labels taken out and the media range published by Swarm in `mode`.

    None leaves the file as docker-xms wrote it. Swarm's long syntax has one entry per port (it names no ranges).
    """
    if mode is None:
        return compose
    doc = yaml.safe_load(compose)
    service = doc["services"]["rtpengine"]
    service.pop("labels", None)
    service["ports"] = [
        {"target": p, "published": p, "protocol": "udp", "mode": mode} for p in range(MEDIA_FIRST, MEDIA_LAST + 1)
    ]
    return str(yaml.safe_dump(doc, sort_keys=False))


def totals(nodes: dict[str, dict[str, int]]) -> dict[str, int]:
    """The nodes' readings summed, key by key."""
    out: dict[str, int] = {}
    for reading in nodes.values():
        for key, value in reading.items():
            out[key] = out.get(key, 0) + value
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in sorted(set(before) | set(after))}


def _mb(value: int) -> str:
    return f"{value / 2**20:+,.0f} MB"


def table_rows(section: dict[str, Any]) -> list[list[str]]:
    """The side-by-side table: one row per measure, one column per kind, from a saved section."""
    kinds = [k for k in KINDS if k in section.get("kinds", {})]
    runs = [section["kinds"][k] for k in kinds]
    # A kind that failed part-way has no readings: its cells say so rather than stop the table.
    deltas = [r.get("delta") or {} for r in runs]

    def n(d: dict[str, int], key: str) -> str:
        return f"{d[key]:+,}" if key in d else "-"

    def mb(d: dict[str, int], key: str) -> str:
        return _mb(d[key]) if key in d else "-"

    def reach(run: dict[str, Any]) -> str:
        if run.get("error"):
            return f"failed: {run['error']}"
        got, want = run["reachable"], run["expected"]
        if run["reachable_s"] is None:
            return f"{got} of {want} not reachable after {run['cap_s']} s"
        return f"{run['reachable_s']:.1f} s ({got} of {want})"

    rows = [
        ["tasks running / pending", *[f"{r.get('running', '?')} / {r.get('pending', '?')}" for r in runs]],
        ["time until every task is reachable", *[reach(r) for r in runs]],
        ["iptables rules created", *[n(d, "iptables_rules") for d in deltas]],
        [
            "IPVS services / real servers created",
            *[f"{n(d, 'ipvs_services')} / {n(d, 'ipvs_servers')}" for d in deltas],
        ],
        [
            "of which in the node's namespace / the mesh's / the containers'",
            *[f"{n(d, 'rules_node')} / {n(d, 'rules_mesh')} / {n(d, 'rules_containers')}" for d in deltas],
        ],
        ["network namespaces created", *[n(d, "namespaces") for d in deltas]],
        ["processes created (docker-proxy)", *[f"{n(d, 'processes')} ({n(d, 'docker_proxy')})" for d in deltas]],
        # RSS is what the processes hold; the cgroups' usage also counts page cache, which comes and goes.
        ["memory, RSS (cgroup usage with page cache)", *[f"{mb(d, 'rss')} ({mb(d, 'usage')})" for d in deltas]],
        ["removal after `docker stack rm`", *[f"{r['teardown_s']:.1f} s" for r in runs]],
    ]
    return [["", *kinds], *rows]


def table_md(section: dict[str, Any]) -> list[str]:
    rows = table_rows(section)
    return [
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *["| " + " | ".join(r) + " |" for r in rows[1:]],
    ]


def headlines(section: dict[str, Any]) -> list[str]:
    """One line per kind for the report's headlines."""
    lines = []
    for kind in KINDS:
        run = section.get("kinds", {}).get(kind)
        if not run or run.get("error"):
            continue
        reach = (
            f"every task reachable in {run['reachable_s']:.1f} s"
            if run["reachable_s"] is not None
            else f"{run['reachable']} of {run['expected']} tasks reachable after {run['cap_s']} s"
        )
        d = run["delta"]
        lines.append(
            f"swarm ports, {kind}: {run['running']} tasks, {reach}, {d['iptables_rules']:+,} iptables rules, "
            f"{d['processes']:+,} processes ({d['docker_proxy']:+,} docker-proxy), {d['rss'] / 2**20:+,.0f} MB RSS"
        )
    return lines


def lock_holders(locks: str, inode: int) -> set[int]:
    """The pids /proc/locks names as holding a lock on the file with this inode."""
    out = set()
    for line in locks.splitlines():
        fields = line.split()
        if len(fields) >= 6 and "->" not in fields[1] and fields[5].rsplit(":", 1)[-1] == str(inode):
            out.add(int(fields[4]))
    return out


# --- on the lab ------------------------------------------------------------------------------------------


def _reading(node: Any) -> dict[str, int]:
    rules = count_rules(node.sh("sh", "-c", DUMP, timeout=300))
    procs = count_processes(node.sh("ps", "-e", "-o", "comm="))
    mem = {"usage": 0, "rss": 0}
    for group in (MEMORY / "docker" / node.container.id, MEMORY / node.name):
        if (group / "memory.stat").is_file():
            one = memory_of((group / "memory.stat").read_text(), (group / "memory.usage_in_bytes").read_text())
            mem = {k: mem[k] + one[k] for k in mem}
    return {**rules, **procs, **mem}


def _readings(lab: Any) -> dict[str, dict[str, int]]:
    return {node.name: _reading(node) for node in lab.nodes}


def _reaches(lab: Any, node: Any, cid: str, address: str, kind: str) -> int:
    """Flows it took for RTP to the node's address to be relayed by this task (0: not reachable yet)."""
    from docker_xms.adapters.rtp import NgClient, NgError, open_call, send_stream, udp_socket

    if kind == "docker-xms":
        forward = forwards(node).get(cid[:12])
        if forward is None:
            return 0
        host_low, _, _, start, _ = forward
        offset = host_low - start
    else:
        offset = 0
    ng = in_netns(node.container.attrs["State"]["Pid"], lambda: NgClient(address, timeout=0.5, attempts=2))
    with contextlib.closing(ng), udp_socket("0.0.0.0") as leg_a, udp_socket("0.0.0.0") as leg_b:
        try:
            if not ng.ping():
                return 0
            call = open_call(ng, leg_a, leg_b, sdp_ip=lab.gateway)
        except (NgError, OSError):
            return 0
        try:
            target = (node.address, call.a_sends_to[1] + offset)
            leg_b.settimeout(0.3)
            for flow in range(1, (MESH_FLOWS if kind == "ingress" else 2) + 1):
                # A fresh source port is a new flow: the routing mesh picks a replica for it anew.
                with udp_socket("0.0.0.0") as sender:
                    send_stream(sender, target, 3)
                with contextlib.suppress(TimeoutError):
                    leg_b.recvfrom(2048)
                    return flow
            return 0
        finally:
            with contextlib.suppress(NgError, OSError):
                ng.delete(call.call_id, call.from_tag)


def _available_mb() -> int:
    meminfo = Path("/proc/meminfo").read_text()
    return int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable:"))) // 1024


def _wait_reachable(lab: Any, kind: str, expected: int, deploy_began: float, cap_s: int) -> dict[str, Any]:
    reached: dict[str, dict[str, Any]] = {}
    stopped = ""
    while time.monotonic() - deploy_began < cap_s and len(reached) < expected:
        # Thousands of docker-proxy processes could take this machine's memory, which others' work shares.
        if _available_mb() < MEMORY_FLOOR_MB:
            stopped = f"stopped: this machine had less than {MEMORY_FLOOR_MB} MB available"
            break
        for node in lab.nodes:
            for cid, address in tasks_on(node, SERVICE).items():
                if cid in reached:
                    continue
                flows = _reaches(lab, node, cid, address, kind)
                if flows:
                    reached[cid] = {"node": node.name, "s": round(time.monotonic() - deploy_began, 2), "flows": flows}
        time.sleep(1)
    done = len(reached) >= expected
    return {
        "reachable": len(reached),
        "reachable_s": max(r["s"] for r in reached.values()) if done else None,
        "tasks": reached,
        "stopped": stopped,
    }


def _wait_gone(lab: Any, baseline: dict[str, dict[str, int]], cap_s: float = 300) -> float:
    began = time.monotonic()
    while time.monotonic() - began < cap_s:
        if all(not tasks_on(n, SERVICE) for n in lab.nodes) and all(
            count_processes(n.sh("ps", "-e", "-o", "comm="))["docker_proxy"] <= baseline[n.name]["docker_proxy"]
            for n in lab.nodes
        ):
            return time.monotonic() - began
        time.sleep(1)
    return time.monotonic() - began


def _stop_agent(lab: Any) -> None:
    lab.manager.docker("service", "rm", AGENT_SERVICE, check=False)
    began = time.monotonic()
    while time.monotonic() - began < 180:
        if not any(
            n.docker("ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={AGENT_SERVICE}").split()
            for n in lab.nodes
        ):
            return
        time.sleep(1)


def _one_kind(lab: Any, kind: str, compose: str, agent: str, plan: Plan) -> dict[str, Any]:
    print(f"swarm-ports {kind}: deploying")
    before = _readings(lab)
    run: dict[str, Any] = {"cap_s": plan.cap_s, "expected": len(lab.nodes) if kind == "host" else REPLICAS}
    try:
        if kind == "docker-xms":
            start_agent_service(lab, agent)
        stack = publish(compose, None if kind == "docker-xms" else kind)
        began = time.monotonic()
        lab.manager.docker("stack", "deploy", "--compose-file", "-", STACK, input=stack, timeout=600)
        run["deploy_command_s"] = round(time.monotonic() - began, 2)
        run.update(_wait_reachable(lab, kind, run["expected"], began, plan.cap_s))
        time.sleep(plan.settle_s)
        states = task_states(lab, SERVICE)
        pending = [error for state, error in states if state.startswith("Pending")]
        run["running"] = sum(state.startswith("Running") for state, _ in states)
        run["pending"], run["pending_reason"] = len(pending), (pending[0] if pending else "")
        after = _readings(lab)
        run["before"], run["after"] = before, after
        run["delta"] = delta(totals(before), totals(after))
        run["delta_by_node"] = {name: delta(before[name], after[name]) for name in before}
    except Exception as exc:  # a kind that fails is a finding; the next kind still runs on a clean lab
        run["error"] = str(exc).splitlines()[0][:300]
    finally:
        began = time.monotonic()
        lab.manager.docker("stack", "rm", STACK, check=False)
        _wait_gone(lab, before)
        run["teardown_s"] = round(time.monotonic() - began, 1)
        if kind == "docker-xms":
            _stop_agent(lab)
    seconds = run.get("reachable_s")
    state = f"reachable in {seconds:.1f} s" if seconds is not None else "not all reachable"
    print(
        f"swarm-ports {kind}: {run.get('reachable', 0)} of {run['expected']} {state}; removed in {run['teardown_s']} s"
    )
    return run


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return out


@contextlib.contextmanager
def _tests_lock() -> Iterator[None]:
    """The tests' lock for as long as the lab exists: taken here, or already held by `flock` around this run."""
    with TESTS_LOCK.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not lock_holders(Path("/proc/locks").read_text(), os.fstat(handle.fileno()).st_ino) & _ancestors():
                print(f"waiting for {TESTS_LOCK} (another swarm lab or engine test runs)")
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _lab() -> Iterator[Any]:
    """The swarm lab, started again a little later when the real-time room it needs is not free yet."""
    for attempt in range(3):
        stack = contextlib.ExitStack()
        try:
            lab = stack.enter_context(swarm_lab(client()))
        except RuntimeError as exc:
            # A test's containers that just ended give their real-time runtime back a moment after removal.
            if "real-time pool" not in str(exc) or attempt == 2:
                raise
            print(f"the lab could not start yet ({exc}); again in 15 s")
            time.sleep(15)
            continue
        with stack:
            yield lab
        return


def kernel_option(config: str, name: str) -> str:
    """A kernel build option's value in a kernel config's text ("y", "m", or "not set")."""
    for line in config.splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    return "not set"


def _kernel_ip_vs() -> str:
    """Whether this kernel has IPVS, which Swarm's routing mesh load-balances with (from its build config)."""
    config = kernel_config(Path("/proc"), Path("/boot"))
    return "unknown" if config is None else kernel_option(config, "CONFIG_IP_VS")


def _engine_says(lab: Any, *words: str) -> list[str]:
    """The node engines' distinct error lines that name any of `words` (as a finding, not a failure)."""
    seen: list[str] = []
    for node in lab.nodes:
        logs = subprocess.run(["docker", "logs", node.container.id], capture_output=True, text=True).stderr
        for line in logs.splitlines():
            msg = line.split('msg="', 1)[-1].split('"', 1)[0]
            if "level=error" in line and any(w in msg for w in words) and msg not in seen:
                seen.append(msg)
    return seen[:5]


def _warm_up(lab: Any, image: str) -> None:
    """A task on every node and gone again: Swarm makes a node's ingress sandbox for its first task, once.

    Without this the first kind measured would be charged for it.
    """
    name = "warm-up"
    label = f"label=com.docker.swarm.service.name={name}"
    lab.manager.docker(
        "service", "create", "-d", "--mode", "global", "--name", name, "--entrypoint", "sleep", image, "600"
    )
    try:
        began = time.monotonic()
        while time.monotonic() - began < 120 and not all(
            n.docker("ps", "-q", "--filter", label).split() for n in lab.nodes
        ):
            time.sleep(1)
    finally:
        lab.manager.docker("service", "rm", name, check=False)
    began = time.monotonic()
    while time.monotonic() - began < 120 and any(n.docker("ps", "-aq", "--filter", label).split() for n in lab.nodes):
        time.sleep(1)


def swarm_ports() -> dict[str, Any]:
    """Swarm's publishing (ingress, host mode) against docker-xms's rules for a 6-replica service's media range."""
    plan = plan_from_setting(os.environ.get("BENCH_SWARM_PORTS"), Plan(), "BENCH_SWARM_PORTS")
    missing = [tool for tool in ("docker-registry", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        # `python -m bench` runs every section: a machine set up without the tests' packages skips this one.
        reason = f"the swarm lab needs Debian's {' and '.join(missing)} (scripts/quickstart.sh test installs them)"
        print(f"swarm-ports skipped: {reason}")
        return {"skipped": reason}
    cli("build", "--agent", "-t", AGENT_IMAGE, "--if-missing")
    began = time.monotonic()
    out: dict[str, Any] = {
        "replicas": REPLICAS,
        "media_ports": MEDIA_LAST - MEDIA_FIRST + 1,
        "rounds": 1,
        "cap_s": plan.cap_s,
        "settle_s": plan.settle_s,
        "kinds": {},
    }
    with _tests_lock(), _lab() as lab:
        agent = push(lab, AGENT_IMAGE)
        image = push(lab, RTPENGINE_IMAGE)
        for node in lab.nodes:
            node.docker("pull", image, timeout=600)
            node.docker("pull", agent, timeout=600)
        out["userland_proxy"] = "--userland-proxy=false" not in " ".join(lab.manager.container.attrs["Args"])
        out["lab_ready_s"] = round(time.monotonic() - began, 1)
        compose = cli(
            "compose",
            "rtpengine",
            "--replicas",
            str(REPLICAS),
            "--ports",
            "dnat",
            "--for",
            "stack",
            "--image",
            image,
            "--rt-ms",
            str(RT_MS),
        ).stdout
        out["kernel_ip_vs"] = _kernel_ip_vs()
        _warm_up(lab, image)
        for kind in KINDS:
            out["kinds"][kind] = _one_kind(lab, kind, compose, agent, plan)
        out["engine_errors"] = _engine_says(lab, "ipvs", "port", "ingress")
    out["lab_s"] = round(time.monotonic() - began, 1)
    for row in table_rows(out):
        print(" | ".join(f"{cell:<28}" for cell in row))
    return out
