"""The agent installed as a systemd service, and an agent started when none runs (for `run`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from docker_xms.adapters import hostfiles, hostlock, hostproc
from docker_xms.domain.agent_unit import UNIT_NAME, background_command, unit_text
from docker_xms.domain.metrics import listen_address
from docker_xms.errors import BadInput, XmsError
from docker_xms.settings import Settings

UNIT_PATH = Path("/etc/systemd/system") / UNIT_NAME
AGENT_LOG = Path("/var/log/docker-xms-agent.log")


def executable() -> str:
    """The absolute path of this docker-xms, for ExecStart (systemd needs an absolute path)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "docker-xms" and argv0.exists():
        return str(argv0.absolute())
    beside = Path(sys.executable).parent / "docker-xms"
    if beside.exists():
        return str(beside.absolute())
    found = hostproc.which("docker-xms")
    if found:
        return str(Path(found).absolute())
    return f"{Path(sys.executable).absolute()} -m docker_xms"


def foreign_code(exe: str) -> str | None:
    """The file or directory of the agent's code that someone other than this process's user may write (an
    editable install in another user's clone), or None when it is all this user's alone."""
    import docker_xms  # noqa: PLC0415 - where this very code is installed

    first = exe.split(maxsplit=1)[0]
    for path in (Path(first).resolve(), Path(docker_xms.__file__).resolve().parent):
        if not hostfiles.owned_by_us(path, path.parent):
            return str(path)
    return None


def systemd_running(run_root: Path = Path("/run")) -> bool:
    """Whether systemd is the init system (sd_booted(3)'s test)."""
    return (run_root / "systemd/system").is_dir()


@dataclass(frozen=True)
class Installed:
    unit: str
    path: str
    installed: bool
    alternative: str


def install(
    settings: Settings,
    write: bool = True,
    unit_path: Path = UNIT_PATH,
    cpu_latency_us: int | None = None,
    metrics: str | None = None,
) -> Installed:
    """Write the unit and enable it when systemd runs the host; otherwise only say what to do instead.

    The agent must read the settings this command reads: with another pool cap it would undo the
    budgets commands set, and with another lock path it would write beside them instead of in turn.
    """
    exe = executable()
    environment = settings.environment()
    if metrics is not None:
        listen_address(metrics)  # refused here, not by the service when it starts
    untrusted = foreign_code(exe)
    if write and untrusted is not None:
        raise BadInput(
            f"{untrusted} may be written by another user than root, and a root service started at every boot "
            "must not run it; install docker-xms where only root can write (e.g. pip install as root into "
            "/opt), then run agent install from there."
        )
    text = unit_text(exe, cpu_latency_us, environment, metrics)
    alternative = background_command(exe, environment, str(AGENT_LOG), cpu_latency_us, metrics)
    if not write or not systemd_running():
        return Installed(text, str(unit_path), False, alternative)
    hostfiles.save_text(unit_path, text)
    for command in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", UNIT_NAME]):
        done = hostproc.run(command, timeout=60)
        if done.code != 0:
            raise XmsError(f"{' '.join(command)} failed: {done.last_line()}; {unit_path} was written.")
    return Installed(text, str(unit_path), True, alternative)


@dataclass(frozen=True)
class AgentStart:
    started: bool
    pid: int
    how: str


def ensure_agent(settings: Settings, wait_s: float = 15.0) -> AgentStart:
    """Start an agent unless one runs: through its systemd unit where systemd runs the host, else detached.

    Without an agent, rules of a container removed by hand (`docker rm -f`) would stay until the next
    docker-xms command, and deliver its media range to whatever container gets its address next.
    """
    lock = settings.agent_lock
    pid = hostlock.holder(lock)
    if pid is not None:
        return AgentStart(False, pid, "already running")
    if systemd_running() and UNIT_PATH.exists():
        # Installed already, with the options and settings someone chose: started as it is, never rewritten.
        done = hostproc.run(["systemctl", "start", UNIT_NAME], timeout=60)
        if done.code != 0:
            raise XmsError(f"systemctl start {UNIT_NAME} failed: {done.last_line()}.")
        how = f"as {UNIT_NAME}"
    elif systemd_running() and foreign_code(executable()) is None:
        install(settings)
        how = f"as {UNIT_NAME}"
    else:
        argv = [sys.executable, "-m", "docker_xms", "agent", "--timestamps"]
        hostproc.spawn_detached(argv, AGENT_LOG, extra_env=settings.environment())
        how = f"in the background, logging to {AGENT_LOG}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        pid = hostlock.holder(lock)
        if pid is not None:
            return AgentStart(True, pid, how)
        time.sleep(0.1)
    raise XmsError(f"The docker-xms agent started {how} did not take {lock} within {wait_s:.0f} s.")
