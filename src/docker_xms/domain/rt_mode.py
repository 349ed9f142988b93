"""The host's real-time modes by name: which real-time budget the kernel lets a container's threads run on.

Commands print these names and `--json` and the metrics carry them, so the values are part of the output.
"""

from __future__ import annotations

# `ps --json` imports this module: typing is only for the type checker (its import costs the listing ~2 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    RtMode = Literal["per-group", "global", "v2-rt-group", "none", "cpus"]

# cgroup v1 with CONFIG_RT_GROUP_SCHED: every group has a budget of its own, which docker-xms shares out.
PER_GROUP: RtMode = "per-group"
# No real-time group scheduling: every real-time thread draws on the host's one budget.
GLOBAL: RtMode = "global"
# CONFIG_RT_GROUP_SCHED on cgroup v2: every container's group holds 0, which the engine cannot raise.
V2_RT_GROUP: RtMode = "v2-rt-group"
# kernel.sched_rt_runtime_us is 0: no real-time thread may run at all.
NONE: RtMode = "none"
# How docker-xms shares real-time CPU rather than what the kernel offers: CPU sets of their own for media
# containers (domain/cpusets.py), with budgets by CPU share where the kernel keeps them per group. Only the
# shown mode (`rt status`, the metrics) takes it; the kernel's stays one of the above.
CPUS: RtMode = "cpus"
