"""The plan's generated files and states: how an image docker-xms builds holds its media units until the
host's docker-xms has handed the container its plan.

A container docker-xms did not create (a Compose replica, a Swarm task) starts before anyone has told it
where peers reach it, which host ports its media uses and what real-time share it has. Every image built
from a profile whose media configuration is an instance file carries a oneshot unit
(`docker-xms-plan.service`) that the server's units require and follow: it waits until the host has
written the server's instance files and a marker (usecases/plan.py), then lets them start, so that their
threads are real-time from the first and every SDP names the node's address. The host writes into the
container, never reads from it; the marker holds the start time of the container's first process (as the
kernel counts it, the same from the host and inside), so that a marker left from an earlier start is not
taken for this one. A container `run` creates gets its plan at create and says so in its environment.

Whether the unit waits, how long and what it does then come from the container's environment: a Compose file
from `docker-xms compose` sets them from the host's settings; without them (a plain `docker run` of the
image) the server starts at once, as before; the unit's words go to the container's journal
(`journalctl -u docker-xms-plan`), as systemd's own do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# `ps --json` imports this module: typing is only for the type checker (its import costs the listing ~2 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    PlanState = Literal["given", "waiting", "none"]

PLAN_UNIT = "docker-xms-plan.service"
PLAN_SCRIPT = "/usr/local/sbin/docker-xms-plan-wait"
PLAN_MARKER = "/etc/docker-xms-plan"
# The container's environment: the plan given at create (`run`), how long to wait, whether to start without.
PLAN_GIVEN_ENV = "DOCKER_XMS_PLAN"
PLAN_WAIT_ENV = "DOCKER_XMS_PLAN_WAIT_S"
START_WITHOUT_ENV = "DOCKER_XMS_START_WITHOUT_PLAN"
DEFAULT_WAIT_S = 60
MAX_WAIT_S = 3600
# Seconds before a container's wait ends after which the host no longer hands it a plan: it might start
# without one between the host's look and its write, and its server would then run on other numbers.
HANDOVER_MARGIN_S = 5


def plan_unit(units: Sequence[str]) -> str:
    """The oneshot the server's `units` require and start after; it fails (and they stay stopped) only when
    no plan came and the container says not to start without one."""
    held = " ".join(units)
    return f"""[Unit]
Description=docker-xms plan: wait until this host's docker-xms has handed the container its plan
Before={held}

[Service]
Type=oneshot
RemainAfterExit=yes
# Through bash: the image build does not keep a file's mode. The script bounds its own wait.
ExecStart=/bin/bash {PLAN_SCRIPT}
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
RequiredBy={held}
"""


def plan_script() -> str:
    """The wait: at once when the plan was given at create, else until the marker names this start."""
    return f"""#!/bin/bash
# docker-xms plan wait (see the image's {PLAN_UNIT}).
say() {{ echo "docker-xms: $*"; }}
env_of() {{ tr '\\0' '\\n' </proc/1/environ 2>/dev/null | sed -n "s/^$1=//p" | head -n 1 | head -c 16; }}
if [[ $(env_of {PLAN_GIVEN_ENV}) == given ]]; then
    say "plan given at create"
    exit 0
fi
wait_s=$(env_of {PLAN_WAIT_ENV})
if [[ -z $wait_s ]]; then
    say "no plan asked for ({PLAN_WAIT_ENV} is not set): starting at once"
    exit 0
fi
[[ $wait_s =~ ^[0-9]{{1,4}}$ ]] && ((wait_s <= {MAX_WAIT_S})) || wait_s={DEFAULT_WAIT_S}
without=$(env_of {START_WITHOUT_ENV})
# The first process's start time, field 22 of its stat (after the name, which may hold spaces).
start=$(sed 's/^.*) //' /proc/1/stat | cut -d ' ' -f 20)
say "waiting up to $wait_s s for this host's docker-xms to hand over the plan"
for ((i = 0; i <= wait_s * 5; i++)); do
    if [[ -f {PLAN_MARKER} && $(head -c 32 {PLAN_MARKER}) == "$start" ]]; then
        say "plan given after $((i / 5)) s"
        exit 0
    fi
    sleep 0.2
done
if [[ $without == 0 || $without == false ]]; then
    say "no plan within $wait_s s: the media server stays stopped (start_without_plan is false)"
    exit 1
fi
say "no plan within $wait_s s: starting the media server without one"
"""


def wait_s_of(env: Sequence[str]) -> int | None:
    """How long a container waits for its plan, from its environment as the engine keeps it ("NAME=value"),
    read as the unit reads it (a bad value is the default); None when it does not wait: its plan was given
    at create, or nothing asked it to wait (a plain `docker run` of the image starts at once)."""
    if _env_value(env, PLAN_GIVEN_ENV) == "given":
        return None
    raw = _env_value(env, PLAN_WAIT_ENV)
    if not raw:
        return None
    if raw.isdigit() and len(raw) <= 4 and int(raw) <= MAX_WAIT_S:
        return int(raw)
    return DEFAULT_WAIT_S


def _env_value(env: Sequence[str], name: str) -> str:
    prefix = name + "="
    return next((item[len(prefix) :] for item in env if item.startswith(prefix)), "")


def plan_state(given: bool, waits: bool, running: bool, elapsed_s: float, wait_s: int) -> PlanState:
    """given: the host handed it its plan (or `run` gave it at create); waiting: its image holds its server
    until then and its wait is not over; none: anything else (an image that does not wait, or one that
    started without its plan)."""
    if given:
        return "given"
    if waits and running and 0 <= elapsed_s < wait_s:
        return "waiting"
    return "none"


def still_taking(elapsed_s: float, wait_s: int) -> bool:
    """Whether a waiting container can still be handed its plan, with the margin."""
    return 0 <= elapsed_s < wait_s - HANDOVER_MARGIN_S


def container_env(wait_s: int, start_without: bool) -> Mapping[str, str]:
    """The environment a Compose file gives a replica: the host's settings for the wait."""
    return {PLAN_WAIT_ENV: str(wait_s), START_WITHOUT_ENV: "true" if start_without else "false"}
