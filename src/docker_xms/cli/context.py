"""What every command shares: the settings, read once per invocation, the engine they name, the host they
work on (opened once per invocation) and the profiles they find. The composition root: the only CLI module
that reaches the adapters; adapters are imported where they are first needed so that `docker-xms --help`
starts fast.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import click

from docker_xms.settings import Settings

if TYPE_CHECKING:
    from docker_xms.adapters.engine import Engine
    from docker_xms.domain.profiles import Profile
    from docker_xms.usecases.boundaries import NetfilterApi
    from docker_xms.usecases.host import Host, HostOpener

_KEY = "docker_xms.settings"
_HOST_KEY = "docker_xms.host"


def settings() -> Settings:
    """The settings of this invocation: the config file and the environment, read on first use only."""
    from docker_xms.adapters.config import load_settings

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return load_settings()
    # `meta` is one dict shared by every context of an invocation (group, subgroup, command).
    cached = ctx.meta.get(_KEY)
    if not isinstance(cached, Settings):
        cached = ctx.meta[_KEY] = load_settings()
    return cached


def engine(timeout: int = 120) -> Engine:
    from docker_xms.adapters.engine import Engine

    return Engine.connect(timeout=timeout, host=settings().docker_host)


def netfilter(bridge: str = "") -> NetfilterApi:
    """Netfilter for the media forwards of containers on `bridge` (the engine's default: RtHost.bridge);
    "": Docker's."""
    from docker_xms.adapters.netfilter import Netfilter
    from docker_xms.domain.engine_types import DEFAULT_BRIDGES, DOCKER

    return Netfilter(bridge=bridge or DEFAULT_BRIDGES[DOCKER])


def host(on: Engine | None = None) -> Host:
    """The host of this invocation, opened on first use only: on `on` when the command has connected to
    the engine already. The commands that change it check for root first (usecases/root.require_root)."""
    from docker_xms.usecases.host import Host
    from docker_xms.usecases.rt import open_host

    ctx = click.get_current_context(silent=True)
    cached = ctx.meta.get(_HOST_KEY) if ctx is not None else None
    if isinstance(cached, Host):
        return cached
    rt = open_host(on if on is not None else engine(), settings())
    opened = Host(rt, netfilter(rt.bridge))
    if ctx is not None:
        ctx.meta[_HOST_KEY] = opened
    return opened


def host_opener() -> HostOpener:
    """For the agent, which connects again, and opens the host again, each time the engine comes back."""
    from docker_xms.adapters.engine import Engine
    from docker_xms.usecases.host import HostOpener
    from docker_xms.usecases.rt import open_host

    given = settings()
    return HostOpener(
        connect=lambda: Engine.connect(timeout=30, host=given.docker_host),
        open=lambda engine: open_host(engine, given),
        netfilter=netfilter(),
        netfilter_on=netfilter,
    )


def profile(name_or_path: str) -> Profile:
    from docker_xms.adapters.profile_store import load_profile

    return load_profile(name_or_path, settings().profile_dirs)


def profiles() -> list[Profile]:
    from docker_xms.adapters.profile_store import list_profiles

    return list_profiles(settings().profile_dirs)


def interruptible() -> AbstractContextManager[None]:
    """SIGTERM and SIGHUP undo the work under way as Ctrl-C does."""
    from docker_xms.adapters.signals import interruptible as signals_interruptible

    return signals_interruptible()


def ignore_stopping() -> None:
    from docker_xms.adapters.signals import ignore_stopping as signals_ignore_stopping

    signals_ignore_stopping()


def enter_shell(pid: int, container_id: str, command: tuple[str, ...], use_nsenter: bool = False) -> None:
    """Replace this process with a shell (or `command`) in the container."""
    from docker_xms.adapters import nsenter

    nsenter.enter(nsenter.shell_argv(pid, container_id, command, use_nsenter))
