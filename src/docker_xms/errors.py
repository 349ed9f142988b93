"""Errors that reach the user as one sentence and an exit code.

Exit codes: 2 for bad input (the user can fix the command line), 1 for a failure while working.
"""

from __future__ import annotations


class XmsError(Exception):
    """A failure with a message meant for the user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(XmsError):
    """The command line, a file it names or the host's setup is wrong; nothing was changed."""

    exit_code = 2


class EngineUnavailable(XmsError):
    """No Docker engine answered."""


class NotFound(BadInput):
    """A container, image or profile the user named does not exist."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP stopped a command; `message` says what was undone."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        import signal  # noqa: PLC0415 - not loaded by every command for the rare one that is interrupted

        self.signum = signum
        self.name = signal.Signals(signum).name
        self.message = message or f"Stopped by {self.name}."
        super().__init__(self.message)

    @property
    def exit_code(self) -> int:
        # The shell's convention for a process ended by a signal.
        return 128 + self.signum
