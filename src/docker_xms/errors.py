"""Errors that reach the user as one sentence and an exit code.

Exit codes: 2 for bad input (the user can fix the command line), 1 for a failure while working.
"""

from __future__ import annotations


class XmsError(Exception):
    """A failure with a message meant for the user.

    Code the error passes through on its way up adds what it did about it (`add_context`) instead of raising
    a new error made of this one's words: the error keeps its type, so that callers can still tell it apart.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.reason = message
        self.context: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """What the user reads: the error's own sentence, then the context added on its way up."""
        return " ".join((self.reason, *self.context))

    def add_context(self, sentence: str) -> None:
        self.context = (*self.context, sentence)

    def __str__(self) -> str:
        return self.message


class BadInput(XmsError):
    """The command line, a file it names or the host's setup is wrong; nothing was changed."""

    exit_code = 2


class EngineUnavailable(XmsError):
    """No Docker engine answered."""


class NotFound(BadInput):
    """A container, image or profile the user named does not exist."""


class StartBudgetRefused(XmsError):
    """The engine could not start a container because the kernel refused the real-time budget its configuration
    carries, written into its new group: the parent had too little room left, for now (a group removed a moment
    ago still counts) or for good."""


class CgroupsNotWritable(BadInput):
    """The engine refused to make a container's own cgroup writable (writable-cgroups=true, Engine 28 and later),
    which systemd needs on cgroup v2; nothing was created."""


class ContainerBeingRemoved(XmsError):
    """The engine refused to change a container it is removing: what the change was for no longer matters."""


class StepFailed(XmsError):
    """A step of longer work (building, finishing or pushing an image) failed: the sentence names the step first.

    `add_context` only appends, and these sentences must say which step before why, so the step is a field of its
    own. The failure itself stays whole in `cause` (also `__cause__`), type and all, and so does its exit code.
    `why` replaces the cause's own sentence where the step explains it in the user's words; `detail` (the engine's
    log, say) follows on a line of its own.
    """

    def __init__(self, step: str, cause: XmsError, why: str | None = None, detail: str | None = None) -> None:
        text = f"{step} failed: {cause.message if why is None else why}"
        super().__init__(text if detail is None else f"{text}\n{detail}")
        self.step = step
        self.cause = cause
        self.exit_code = cause.exit_code


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
