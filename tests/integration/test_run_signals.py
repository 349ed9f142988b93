"""SIGTERM and SIGHUP during `run` undo it as Ctrl-C does: no container, no rules, budgets given back.

`run` is started as a user starts it, on a terminal (a pseudo-terminal here, so that the phase under
way is shown) and in a process group of its own, and is signalled while it waits for the media server
to be ready: the container then runs with its budget and its DNAT rules, so all three must be undone.
Expected budgets come from the cgroup files and the engine's labels by the kernel's rule.
"""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.helpers import cli_path, run_cli, wait_for
from tests.host_state import PARENT, fair_shares, rule_lines, running_managed

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PREFIX = "lc-signal-"
READINESS = "Waiting for the media server to be ready"
CHAINS = (("nat", "DOCKER-XMS"), ("nat", "DOCKER-XMS-POSTROUTING"), ("filter", "DOCKER-XMS-FORWARD"))


class TerminalRun:
    """`docker-xms run` on a pseudo-terminal, in its own process group; everything it prints is kept."""

    def __init__(self, *args: str) -> None:
        main, side = pty.openpty()
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "xterm"}
        self.proc = subprocess.Popen(
            [cli_path(), "run", *args], stdin=side, stdout=side, stderr=side, env=env, start_new_session=True
        )
        os.close(side)
        self._main = main
        self.text = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._main, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.text += chunk.decode(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        # Its last output: read until the terminal's other end is closed by all that held it.
        self._reader.join(10)
        return code


def chain_lines(short_id: str) -> list[str]:
    lines = []
    for table, chain in CHAINS:
        done = subprocess.run(["iptables", "-t", table, "-S", chain], capture_output=True, text=True, check=False)
        lines += [line for line in done.stdout.splitlines() if short_id in line]
    return lines


def budgets(client: Any) -> dict[str, int]:
    running = client.containers.list(filters={"label": "io.docker-xms.managed=true"})
    return {c.id: int((PARENT / c.id / "cpu.rt_runtime_us").read_text()) for c in running}


@pytest.fixture
def other(docker_client: Any, rtpengine_image: str) -> Iterator[str]:
    """Another managed container, weight 2, whose budget the interrupted run takes and must give back."""
    name = PREFIX + "other"
    result = run_cli("run", "-c", "--no-wait", "--json", "--name", name, "--media-ports", "10", "--rt-weight", "2")
    assert result.code == 0, result.err + result.out
    yield name
    for container in docker_client.containers.list(all=True, filters={"name": PREFIX}):
        if container.name.startswith(PREFIX):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
    run_cli("rt", "rebalance", "--json")


@pytest.mark.parametrize(
    ("how", "signum"),
    [("SIGTERM", signal.SIGTERM), ("SIGHUP", signal.SIGHUP), ("SIGTERM to the process group", signal.SIGTERM)],
)
def test_a_signal_during_the_readiness_wait_undoes_the_run(
    docker_client: Any, rtpengine_image: str, other: str, how: str, signum: int
) -> None:
    name = PREFIX + ("group" if "group" in how else signal.Signals(signum).name.lower())
    before = budgets(docker_client)
    assert before == fair_shares(docker_client)
    run = TerminalRun("-c", "--ports", "dnat", "--name", name, "--profile", "rtpengine", "-i", rtpengine_image)
    try:
        wait_for(lambda: READINESS in run.text or run.proc.poll() is not None, 120, 0.02, "the readiness phase")
        assert run.proc.poll() is None, run.text
        container = docker_client.containers.get(name)
        short = container.id[:12]
        # What the signal must undo is there: the container runs with its share and its rules.
        assert container.status == "running"
        # DNAT, masquerade for 127.0.0.1, filter ACCEPT, and the SNAT from the advertised address.
        assert len(chain_lines(short)) == 4, chain_lines(short)
        assert budgets(docker_client) == fair_shares(docker_client)
        assert budgets(docker_client)[container.id] > 0
        if "group" in how:
            os.killpg(run.proc.pid, signum)
        else:
            run.proc.send_signal(signum)
        code = run.wait()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    assert code == 128 + signum, run.text
    assert f"Stopped by {signal.Signals(signum).name}: the container was removed" in run.text
    assert name not in {c.name for c in docker_client.containers.list(all=True)}
    assert chain_lines(short) == []
    assert rule_lines(short) == []
    assert not (PARENT / container.id).exists()
    after = budgets(docker_client)
    assert after == fair_shares(docker_client)
    assert after == before


def test_a_second_signal_does_not_cut_the_rollback_short(docker_client: Any, rtpengine_image: str, other: str) -> None:
    name = PREFIX + "twice"
    before = budgets(docker_client)
    run = TerminalRun("-c", "--ports", "dnat", "--name", name, "-i", rtpengine_image)
    try:
        wait_for(lambda: READINESS in run.text or run.proc.poll() is not None, 120, 0.02, "the readiness phase")
        assert run.proc.poll() is None, run.text
        short = docker_client.containers.get(name).id[:12]
        run.proc.send_signal(signal.SIGTERM)
        # SIGTERM, not one of the later signals, is the one acted on: the rollback it started says so.
        wait_for(lambda: "undoing:" in run.text or run.proc.poll() is not None, 30, 0.005, "the rollback")
        # Signals keep coming while it undoes what it did, and until it exits.
        deadline = time.monotonic() + 30
        while run.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGINT)
                os.killpg(run.proc.pid, signal.SIGHUP)
            time.sleep(0.01)
        code = run.wait()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    assert code == 128 + signal.SIGTERM, run.text
    assert "Stopped by SIGTERM: the container was removed" in run.text
    assert name not in {c.name for c in docker_client.containers.list(all=True)}
    assert chain_lines(short) == []
    assert budgets(docker_client) == fair_shares(docker_client) == before


def test_a_signal_during_the_budget_writes_leaves_one_whole_plan(
    docker_client: Any, rtpengine_image: str, other: str
) -> None:
    # Six managed containers: every rebalance below moves six budgets, each through the engine's
    # update API and the cgroup file, which leaves time to signal it between two writes.
    for i in range(5):
        args = ["run", "-c", "--no-wait", "--json", "--name", f"{PREFIX}w{i}", "--media-ports", "10"]
        result = run_cli(*args, timeout=120)
        assert result.code == 0, result.err + result.out
    settled = run_cli("rt", "rebalance", "--json")
    assert settled.code == 0, settled.err
    weights = running_managed(docker_client)
    files = {cid: PARENT / cid / "cpu.rt_runtime_us" for cid in weights}

    def now() -> dict[str, int]:
        return {cid: int(f.read_text()) for cid, f in files.items()}

    mid_plan = 0
    for attempt in range(8):
        # Read and changed under the host lock, so that an agent (`run` may have started one) is not
        # half-way through a pass of its own: every budget halved, which the kernel always accepts.
        with host_lock():
            target = fair_shares(docker_client)
            for cid, f in files.items():
                f.write_text(str(target[cid] // 2))
            before = now()
        assert before != target
        proc = subprocess.Popen(
            [cli_path(), "rt", "rebalance", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        seen = before
        deadline = time.monotonic() + 30
        while seen == before and proc.poll() is None and time.monotonic() < deadline:
            seen = now()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        with host_lock():
            after = now()
        order = sorted(weights)
        states = [[state[c] for c in order] for state in (before, seen, after, target)]
        assert after in (before, target), (attempt, [weights[c] for c in order], states, proc.returncode)
        if seen not in (before, target):
            mid_plan += 1
            # Held until the plan's last write, then acted on: the process ends by SIGTERM.
            assert proc.returncode == -signal.SIGTERM
            assert after == target
    print(f"SIGTERM landed between two writes in {mid_plan} of 8 attempts")
    assert mid_plan >= 1, "no SIGTERM landed between two writes of a plan in 8 attempts"


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """docker-xms's host-wide lock (the default path), as every docker-xms process takes it."""
    import fcntl

    fd = os.open("/run/docker-xms/host.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
