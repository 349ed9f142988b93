"""The host a command works on, decided once when it starts and handed to the use cases: its engine, its
real-time figures (cgroup version and driver, real-time mode, the engine's parent) and its netfilter.

The command line builds it (cli/context.py); the unit tests build the same object from in-memory fakes.
A use case never builds an adapter of its own, so what it touches is what it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from docker_xms.adapters.engine import Engine
    from docker_xms.settings import Settings
    from docker_xms.usecases.boundaries import EngineApi, NetfilterApi
    from docker_xms.usecases.rt import RtHost


@dataclass(frozen=True)
class Host:
    rt: RtHost
    netfilter: NetfilterApi

    @property
    def engine(self) -> EngineApi:
        return self.rt.engine

    @property
    def settings(self) -> Settings:
        return self.rt.settings


@dataclass(frozen=True)
class HostOpener:
    """How a long-running process reaches the host again each time the engine comes back: an `RtHost` holds
    one engine connection, and the engine's cgroup driver may have changed with its restart."""

    # A fresh engine connection: the agent closes each one, and its event stream needs one of its own.
    connect: Callable[[], Engine]
    open: Callable[[EngineApi], RtHost]
    # For the engine's default bridge (docker0), and for another one once the host says so (Podman's podman0).
    netfilter: NetfilterApi
    netfilter_on: Callable[[str], NetfilterApi] | None = None
