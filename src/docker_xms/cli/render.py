"""Output helpers shared by the commands: one console, errors on stderr, JSON when asked, progress of long work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def error(message: str) -> None:
    # Escaped: a message may quote what a container carries (a label's value), and names such as
    # `docker-xms[webrtc]` must print as written.
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


class StatusReporter:
    """Shows the current phase with a spinner and the latest line of detail under it."""

    def __init__(self, status: Status) -> None:
        self._status = status
        self._phase = ""

    def phase(self, text: str) -> None:
        if self._phase:
            console.print(f"[green]✓[/] {escape(self._phase)}")
        self._phase = text
        self._status.update(escape(text))

    def detail(self, text: str) -> None:
        line = text.strip().splitlines()[-1] if text.strip() else ""
        self._status.update(f"{escape(self._phase)}\n  [dim]{escape(line[:120])}[/]")

    def done(self) -> None:
        if self._phase:
            console.print(f"[green]✓[/] {escape(self._phase)}")
            self._phase = ""


@contextmanager
def reporting() -> Iterator[StatusReporter]:
    with console.status("Starting") as status:
        reporter = StatusReporter(status)
        yield reporter
        reporter.done()
