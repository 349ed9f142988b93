"""What every command shares: the settings, read once per invocation, and the engine they name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from docker_xms.settings import Settings

if TYPE_CHECKING:
    from docker_xms.adapters.engine import Engine

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
