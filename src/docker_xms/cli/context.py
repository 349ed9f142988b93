"""What every command shares: the settings, read once per invocation, the engine they name and the
profiles they find. The composition root: the only CLI module that reaches the adapters; adapters are
imported where they are first needed so that `docker-xms --help` starts fast.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import click

from docker_xms.settings import Settings

if TYPE_CHECKING:
    from docker_xms.adapters.engine import Engine
    from docker_xms.domain.profiles import Profile

_KEY = "docker_xms.settings"


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
