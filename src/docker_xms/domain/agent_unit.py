"""The agent as a host service: its command line, its systemd unit, and the line that runs it without one.

The unit carries the installing command's settings as its environment, so that the agent reads the same
pool cap, lock path and state directory as the commands it works beside.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from docker_xms.errors import BadInput

UNIT_NAME = "docker-xms-agent.service"


def agent_command(exe: str, cpu_latency_us: int | None = None, metrics: str | None = None) -> str:
    """The agent's command line, as a service runs it."""
    return (
        f"{exe} agent"
        + ("" if cpu_latency_us is None else f" --cpu-latency-us {cpu_latency_us}")
        + ("" if metrics is None else f" --metrics {shlex.quote(metrics)}")
    )


def unit_text(
    exe: str,
    cpu_latency_us: int | None = None,
    environment: Mapping[str, str] | None = None,
    metrics: str | None = None,
) -> str:
    """The service unit; `environment` is what the agent needs to read the installer's settings."""
    lines = "".join(_environment_line(name, value) + "\n" for name, value in (environment or {}).items())
    return f"""[Unit]
Description=docker-xms agent: real-time budgets and media port rules kept right
After=docker.service
Wants=docker.service

[Service]
Type=simple
# The settings of the command that installed the unit: the same config file, the same overrides.
{lines}ExecStart={agent_command(exe, cpu_latency_us, metrics)}
Restart=always
RestartSec=1
# The agent finishes the reconciliation under way and exits on SIGTERM.
KillSignal=SIGTERM
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
"""


def background_command(
    exe: str,
    environment: Mapping[str, str],
    log_path: str,
    cpu_latency_us: int | None = None,
    metrics: str | None = None,
) -> str:
    """A shell line that runs the agent detached with the same settings, for a host without systemd."""
    assignments = " ".join(shlex.quote(f"{name}={value}") for name, value in environment.items())
    return f"nohup env {assignments} {agent_command(exe, cpu_latency_us, metrics)} >{log_path} 2>&1 &"


def _environment_line(name: str, value: str) -> str:
    if "\n" in value or not value.isprintable():
        raise BadInput(f"{name} holds a line break or control character; a service unit cannot carry it.")
    # Quoted, so spaces stay in the value; % is systemd's specifier sign, doubled to mean itself.
    quoted = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'Environment="{quoted}"'
