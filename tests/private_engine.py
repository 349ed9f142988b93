"""A Docker engine of the tests' own, for tests that stop and restart an engine.

Stopping the host's engine stops every container on it that has no restart policy: on a host that
runs media in production, that is an outage. So tests that restart an engine get one of their own:
its own socket, data root, exec root and pid file, its own network namespace (so its bridge and its
netfilter rules are not the host's), and its own cgroup parent beside the host engine's /docker.

Real-time room: the host engine's parent /docker holds the whole pool (docker-xms gives its parent all
it can), so the room for this engine's parent is made the way an administrator would: a rebalance of
the host engine with the pool capped, the freed runtime written into this engine's parent, then a
rebalance without the cap, which sees the sibling and keeps off it. Tear-down gives it all back.

docker-xms runs against it inside the network namespace with DOCKER_HOST and DOCKER_XMS_CGROUP_PARENT.
`nsenter --net` enters the namespace; `ip netns exec` would also mount a fresh /sys, which hides the
cgroup file systems from the engine and from docker-xms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker

from docker_xms.adapters.config import load_settings
from docker_xms.adapters.engine import Engine
from docker_xms.adapters.hostlock import host_lock
from docker_xms.errors import XmsError
from docker_xms.usecases.rt import open_host, read_state, rebalance_locked
from tests.helpers import Result, cli_path, run_cli

NAME = "docker-xms-test-engine"
RUN_DIR = Path("/run") / NAME
SOCKET = RUN_DIR / "docker.sock"
EXEC_ROOT = RUN_DIR / "exec"
PID_FILE = RUN_DIR / "dockerd.pid"
CONFIG_FILE = RUN_DIR / "daemon.json"
LOG_FILE = Path("/var/log") / f"{NAME}.log"
DATA_ROOT = Path("/var/lib") / NAME
CGROUP_PARENT = f"/{NAME}"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_ROOT = CGROUP_ROOT / "cpu"
NETNS = NAME
ROOM_US = 200_000


class Unavailable(Exception):
    """This host cannot give the tests an engine of their own; the reason says why."""


@contextlib.contextmanager
def host_room(room_us: int) -> Iterator[None]:
    """Inside: the host engine's parent /docker holds `room_us` less than the whole pool, under the host lock.

    The host lock is held throughout, so an agent on the host (which knows no cap) cannot take the room
    back before the caller has put it where it goes; the next uncapped rebalance then keeps off it.
    """
    settings = load_settings()
    engine = Engine.connect(timeout=60)
    try:
        with host_lock(settings.lock_path):
            pool = read_state(open_host(engine, settings)).pool_us
            if pool < 2 * room_us:
                raise Unavailable(f"the host's real-time pool ({pool} us) leaves no {room_us} us to spare")
            rebalance_locked(open_host(engine, dataclasses.replace(settings, rt_pool_us=pool - room_us)))
            yield
    finally:
        engine.close()


class PrivateEngine:
    def __init__(self, room_us: int = ROOM_US) -> None:
        self.room_us = room_us
        self.proc: subprocess.Popen[bytes] | None = None
        self.up_s = 0.0

    # --- how to reach it ----------------------------------------------------------------------------

    @property
    def parent(self) -> Path:
        """This engine's parent in the cpu controller."""
        return CPU_ROOT / NAME

    def env(self) -> dict[str, str]:
        # No agent started on the side by `run`: the tests decide when an agent runs.
        return {
            "DOCKER_HOST": f"unix://{SOCKET}",
            "DOCKER_XMS_CGROUP_PARENT": CGROUP_PARENT,
            "DOCKER_XMS_START_AGENT": "0",
        }

    def in_netns(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{NETNS}", *argv]

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> Result:
        """docker-xms as a user on this engine's host would run it (`env`: settings of the user's own)."""
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **self.env(), **(env or {})}
        proc = subprocess.run(
            self.in_netns([cli_path(), *args]), capture_output=True, text=True, env=env, timeout=timeout
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def iptables(self, *args: str) -> str:
        done = subprocess.run(self.in_netns(["iptables", *args]), capture_output=True, text=True)
        return done.stdout

    def client(self, timeout: int = 30) -> Any:
        return docker.DockerClient(base_url=f"unix://{SOCKET}", version="auto", timeout=timeout)

    def answers(self) -> bool:
        try:
            client = docker.DockerClient(base_url=f"unix://{SOCKET}", version="1.41", timeout=2)
        except docker.errors.DockerException:
            return False
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()

    # --- life cycle ---------------------------------------------------------------------------------

    def up(self, host: Any, images: list[str]) -> None:
        """Start it and give it `images` from the host engine; raises Unavailable with the reason."""
        t0 = time.monotonic()
        for tool in ("ip", "nsenter", "dockerd", "iptables"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} is not installed")
        if not (CPU_ROOT / "cpu.rt_runtime_us").is_file():
            raise Unavailable("the cpu controller has no real-time group scheduling on cgroup v1 here")
        # What a run that was killed before its tear-down left behind.
        self.down()
        done = subprocess.run(["ip", "netns", "add", NETNS], capture_output=True, text=True)
        if done.returncode != 0:
            raise Unavailable(f"ip netns add failed: {done.stderr.strip()}")
        subprocess.run(self.in_netns(["ip", "link", "set", "lo", "up"]), check=True)
        EXEC_ROOT.mkdir(parents=True, exist_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        # Its own (empty) configuration: the host's /etc/docker/daemon.json is the host engine's.
        CONFIG_FILE.write_text("{}\n")
        self.make_room()
        self.start()
        self.wait_answers(60)
        client = self.client(timeout=300)
        try:
            for image in images:
                # docker save | docker load, as a stream: no registry and no file in between.
                client.api.load_image(host.api.get_image(image))
        finally:
            client.close()
        self.up_s = time.monotonic() - t0

    def start(self) -> None:
        LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            "dockerd",
            f"--host=unix://{SOCKET}",
            f"--data-root={DATA_ROOT}",
            f"--exec-root={EXEC_ROOT}",
            f"--pidfile={PID_FILE}",
            f"--cgroup-parent={CGROUP_PARENT}",
            f"--config-file={CONFIG_FILE}",
        ]
        with open(LOG_FILE, "ab") as log:
            self.proc = subprocess.Popen(
                self.in_netns(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_answers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise Unavailable(f"its dockerd exited with {self.proc.returncode}: {self.log_tail()}")
            time.sleep(0.02)
        raise Unavailable(f"its dockerd did not answer within {timeout:.0f} s: {self.log_tail()}")

    def pid(self) -> int | None:
        """The running dockerd's pid (nsenter execs it, so it is the pid this object started)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> None:
        """Stop its dockerd and wait for it to exit (and be reaped)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(LOG_FILE.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- real-time room -----------------------------------------------------------------------------

    def make_room(self) -> None:
        """Move `room_us` from the host engine's parent to this engine's parent."""
        try:
            with host_room(self.room_us):
                self.parent.mkdir(exist_ok=True)
                (self.parent / "cpu.rt_runtime_us").write_text(f"{self.room_us}\n")
        except (OSError, XmsError) as exc:
            raise Unavailable(f"no {self.room_us} us of real-time room for {self.parent}: {exc}") from exc
        again = run_cli("rt", "rebalance", "--json", timeout=120)
        if again.code != 0:
            raise Unavailable(f"the host engine's rebalance beside {self.parent} failed: {again.err.strip()}")

    # --- tear-down ----------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop it and remove everything it made; returns what could not be removed (idempotent)."""
        problems: list[str] = []
        self.stop()
        self.proc = None
        self._stop_leftover_dockerd()
        self._kill_what_runs_in_its_cgroups()
        self._unmount_under(DATA_ROOT, EXEC_ROOT)
        for path in (DATA_ROOT, RUN_DIR):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(path)
            if path.exists():
                problems.append(f"{path} could not be removed")
        problems += self._remove_cgroups()
        if Path(f"/run/netns/{NETNS}").exists():
            done = subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, text=True)
            if done.returncode != 0:
                problems.append(f"ip netns del {NETNS}: {done.stderr.strip()}")
        return problems

    def give_back(self) -> Result:
        """The host engine's parent takes back what this engine's parent held."""
        return run_cli("rt", "rebalance", "--json", timeout=120)

    def _stop_leftover_dockerd(self) -> None:
        # A dockerd of ours from a run killed before its tear-down: known by its pid file.
        try:
            pid = int(PID_FILE.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if f"--exec-root={EXEC_ROOT}".encode() not in cmdline:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _groups(self) -> list[Path]:
        """Its cgroups in every controller, deepest first."""
        found: list[Path] = []
        for controller in sorted(CGROUP_ROOT.iterdir()):
            top = controller / NAME
            if top.is_dir():
                found += [p for p in top.rglob("*") if p.is_dir()] + [top]
        return sorted(found, key=lambda p: len(p.parts), reverse=True)

    def _kill_what_runs_in_its_cgroups(self) -> None:
        # Only processes of containers of this engine's own live there; and the shims it started.
        pids: set[int] = set()
        for group in self._groups():
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (group / "cgroup.procs").read_text().split())
        address = f"{EXEC_ROOT}/containerd/containerd.sock".encode()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if address in (proc / "cmdline").read_bytes():
                        pids.add(int(proc.name))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _unmount_under(self, *roots: Path) -> None:
        mounts = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)

    def _remove_cgroups(self) -> list[str]:
        problems = []
        for group in self._groups():
            runtime = group / "cpu.rt_runtime_us"
            # Children first: a parent's runtime cannot go below what its children hold.
            if runtime.is_file():
                with contextlib.suppress(OSError):
                    runtime.write_text("0\n")
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"rmdir {group}: {exc.strerror}")
        return problems


@contextlib.contextmanager
def private_engine(host: Any, images: list[str], skip: Any) -> Iterator[PrivateEngine]:
    """An engine of the tests' own with `images` for a module; `skip(reason)` (pytest.skip) when none can
    be started. Taken down at the end, with every cgroup and the room it took given back."""
    engine = PrivateEngine()
    try:
        engine.up(host, images)
    except Unavailable as exc:
        engine.down()
        engine.give_back()
        skip(f"no engine of the tests' own could be started ({exc}); the host's engine is never restarted")
    print(f"\nprivate engine up, with {', '.join(images)}, in {engine.up_s:.1f} s")
    try:
        yield engine
    finally:
        problems = engine.down()
        given = engine.give_back()
        assert not problems, problems
        assert given.code == 0, given.err


@contextlib.contextmanager
def emptied_client(engine: PrivateEngine, env: dict[str, str] | None = None) -> Iterator[Any]:
    """A client of the engine for one test: every container on it removed afterwards and the pool rebalanced
    (with `env`: the settings the test ran docker-xms with)."""
    client = engine.client()
    try:
        yield client
    finally:
        for container in client.containers.list(all=True):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        engine.cli("rt", "rebalance", env=env)
        client.close()
