"""Shared test helpers: run the installed CLI as a user would, and boot containers the tests own."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The tests import these from here; they live in the lab, which the benchmark uses too.
from lab.helpers import TEST_LABEL, Result, cli_path, run_cli, wait_for  # noqa: F401

# On every container the suite has `docker-xms run` create (through the labels setting, set in conftest):
# what a run that was cut short left behind is found by it, and only by it.
SUITE_LABEL = "docker-xms-tests.suite"
RTPENGINE_IMAGE = os.environ.get("DOCKER_XMS_RTPENGINE_IMAGE", "docker-xms/rtpengine:latest")
BASE_IMAGE = "docker-xms-test/debian12-systemd:latest"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def counter(port: int, name: str) -> float:
    """One unlabelled sample from an agent's /metrics on 127.0.0.1 (0 when it has none yet)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in (name, f"{name}_total"):
            return float(value)
    return 0.0


def systemd_run_kwargs(test_name: str) -> dict[str, object]:
    """Keyword arguments for the SDK's containers.run that boot systemd on this (cgroup v1) host."""
    return {
        "detach": True,
        "tmpfs": {"/run": "", "/run/lock": ""},
        "volumes": {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"}},
        "cap_add": ["SYS_NICE"],
        "labels": {TEST_LABEL: test_name},
        "stop_signal": "SIGRTMIN+3",
    }


CPU_ROOT = Path("/sys/fs/cgroup/cpu")
PARENT = CPU_ROOT / "docker"


def runtime_of(container_id: str) -> int:
    return int((PARENT / container_id / "cpu.rt_runtime_us").read_text())


def parent_runtime() -> int:
    return int((PARENT / "cpu.rt_runtime_us").read_text())


def children_runtime() -> int:
    total = 0
    for child in PARENT.iterdir():
        file = child / "cpu.rt_runtime_us"
        if file.is_file():
            total += int(file.read_text())
    return total


def ng_ping(host: str, port: int, timeout: float = 2.0) -> bytes:
    """Send rtpengine's ng ping (bencode over UDP) and return the answer."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(b"t1 d7:command4:pinge", (host, port))
        data, _ = sock.recvfrom(4096)
    return data


def managed_names(client) -> set[str]:  # type: ignore[no-untyped-def]
    return {c.name for c in client.containers.list(all=True, filters={"label": "io.docker-xms.managed=true"})}


def running_agents() -> list[str]:
    """Command lines of `docker-xms agent` processes already running on this host (not --once)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            words = cmdline.read_bytes().decode(errors="replace").split("\0")
            text = " ".join(words)
            if ("docker_xms agent" in text or "docker-xms agent" in text) and "--once" not in words:
                found.append(text.strip())
    return found


class LoggedAgent:
    """A `docker-xms agent` process, its log lines collected as they come, started once it says so."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: any("agent started" in line for line in self.lines), 15, what="the agent to start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def terminate(self) -> int:
        """SIGTERM (after SIGCONT, in case a test stopped it); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@contextlib.contextmanager
def agent_for_a_test(process: LoggedAgent) -> Iterator[LoggedAgent]:
    """Yield the agent; afterwards stop it, print its log, and require a clean exit without a traceback."""
    try:
        yield process
    finally:
        code = process.terminate()
        print("agent log:\n" + process.log())
    assert code == 0, process.log()
    assert "agent stopped" in process.log()
    assert "Traceback" not in process.log()


# As a container's root: tries to write cgroup files of the container's group's ancestors (the engine's parent
# and the host's roots, had they been mounted) and to make a cpu group; prints what it wrote, then how many
# `docker` entries its cpu mount shows (0: no other container's group, nor the engine's parent, is visible).
CGROUP_WRITE_ATTEMPT = (
    "for f in /sys/fs/cgroup/cpu/cpu.rt_runtime_us /sys/fs/cgroup/freezer/freezer.state "
    "/sys/fs/cgroup/cpu/cgroup.procs /sys/fs/cgroup/memory/memory.limit_in_bytes; do "
    'if echo 1 > "$f" 2>/dev/null; then echo "wrote $f"; fi; done; '
    "mkdir /sys/fs/cgroup/cpu/x 2>/dev/null && echo made; ls /sys/fs/cgroup/cpu | grep -c docker || true"
)


def writable_cgroup_mounts(mountinfo: str) -> list[tuple[str, str]]:
    """(root in the hierarchy, mount point) of every cgroup mount in a mountinfo text that is writable."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        kind = fields[fields.index("-") + 1]
        if kind in ("cgroup", "cgroup2") and "rw" in fields[5].split(","):
            out.append((fields[3], fields[4]))
    return out


def in_container(name: str, *command: str) -> str:
    """What a command prints, run in a container with `docker exec` (its own capabilities and cgroup)."""
    done = subprocess.run(["docker", "exec", name, *command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def host_mountinfo(name: str) -> str:
    """The container's first process's mountinfo, read from the host."""
    pid = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}}", name], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Path(f"/proc/{pid}/mountinfo").read_text()


def conntrack_drops(stat: str | None = None) -> int:
    """Packets the host's connection tracking dropped, over all CPUs: insertion clashes it could not resolve
    (two first packets of one flow, one from each end, at the same instant) and drops for a full table.
    `stat`: another network namespace's /proc/net/stat/nf_conntrack, read there."""
    lines = (stat if stat is not None else Path("/proc/net/stat/nf_conntrack").read_text()).split("\n")
    columns = lines[0].split()
    wanted = [columns.index("insert_failed"), columns.index("drop")]
    return sum(int(line.split()[i], 16) for line in lines[1:] if line.strip() for i in wanted)


# A `docker-xms agent` of a test's own: beside one the host may have (its own lock, given in its environment).
AGENT_ARGV = [sys.executable, "-m", "docker_xms", "agent", "--interval", "30"]


def renamed_profile_env(tmp_path: Path, profile: str, name: str, **settings: str) -> dict[str, str]:
    """The environment of a CLI or agent that knows a built-in profile also as `name` (its image unchanged),
    with docker-xms settings given by name (advertise="203.0.113.1"), and an agent lock of its own.

    An agent that knows only the installed profiles (the README's demo starts one) gives a container of such
    a profile its budget but no plan: only the test's own agent hands it one."""
    from importlib import resources

    profiles = tmp_path / "profiles"
    profiles.mkdir(exist_ok=True)
    text = (resources.files("docker_xms") / "profiles" / f"{profile}.toml").read_text("utf-8")
    renamed = text.replace(f'name = "{profile}"', f'name = "{name}"', 1)
    assert renamed != text
    (profiles / f"{name}.toml").write_text(renamed)
    return {
        "DOCKER_XMS_PROFILE_PATH": str(profiles),
        "DOCKER_XMS_AGENT_LOCK": str(tmp_path / "agent.lock"),
        **{f"DOCKER_XMS_{key.upper()}": value for key, value in settings.items()},
    }


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker-compose", *args], capture_output=True, text=True, timeout=300)


@contextlib.contextmanager
def compose_replica(tmp_path: Path, profile: str, env: dict[str, str], client: Any) -> Iterator[str]:
    """One replica of `docker-xms compose PROFILE` up with docker-compose (Debian's 1.29); its id. Down after."""
    if shutil.which("docker-compose") is None:
        raise AssertionError("this test needs Debian's docker-compose package (scripts/quickstart.sh test installs it)")
    result = run_cli("compose", profile, env=env)
    assert result.code == 0, result.err
    path = tmp_path / f"{profile}-compose.yml"
    path.write_text(result.out)
    project = f"xmsplan{secrets.token_hex(3)}"
    base = ["-p", project, "-f", str(path)]
    try:
        up = docker_compose(*base, "up", "-d")
        assert up.returncode == 0, up.stderr
        (container,) = client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        yield str(container.id)
    finally:
        docker_compose(*base, "down", "-t", "1")


def policies_in(group: Path) -> dict[str, set[str]]:
    """Thread name -> the scheduling policies its threads run at ("SCHED_FIFO/50"), for every process of a cpu
    cgroup directory, seen from this host's /proc; {} while the group does not exist."""
    from docker_xms.adapters.cgroups import thread_policies
    from docker_xms.errors import NotFound

    procs = group / "cgroup.procs"
    found: dict[str, set[str]] = {}
    for pid in (int(p) for p in procs.read_text().split()) if procs.exists() else ():
        # A process that ended while we looked (a unit's short-lived one at boot) is left out.
        with contextlib.suppress(NotFound):
            for thread in thread_policies(pid):
                found.setdefault(thread.comm, set()).add(f"{thread.policy}/{thread.rt_priority}")
    return found
