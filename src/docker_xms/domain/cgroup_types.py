"""A cgroup's real-time budget as its cpu controller's files hold it: plain data, read by `adapters/cgroups.py`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroupRuntime:
    name: str
    runtime_us: int
    period_us: int
