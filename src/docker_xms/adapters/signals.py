"""Signals that stop a command: SIGINT, SIGTERM and SIGHUP alike, and never in the middle of an undo.

A command that changes the host (`run`) turns each of them into `Interrupted`, an exception that its
rollback catches like any other failure. Steps that must not be cut in two (a budget plan's writes,
creating a container and recording its id, a rollback) run `deferred()`: a signal that arrives
meanwhile waits for the step to end; one that arrives while a rollback is already under way is dropped,
since stopping is what that rollback is doing.

A long-running process (the agent) stops by itself once asked: `call_on_stop` turns SIGINT and SIGTERM
into a call that only asks.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from docker_xms.errors import Interrupted

STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _main_thread() -> bool:
    # Python runs signal handlers in the main thread only, and only there may they be changed.
    return threading.current_thread() is threading.main_thread()


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise `Interrupted` in the main thread while inside, the first one only.

    Later ones find the command stopping already; raised again, one could land in the instant between
    the first exception and the rollback that catches it, and skip that rollback.
    """
    if not _main_thread():
        yield
        return
    raised: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        if raised:
            return
        raised.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, stop) for s in STOPPING}
    try:
        yield
    finally:
        for s, handler in previous.items():
            # Once one has stopped the command, the others find it on its way out: with the default action
            # back, one arriving before the exit would kill it without its exit code and its sentence.
            signal.signal(s, signal.SIG_IGN if raised else signal.SIG_DFL if handler is None else handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then act on the first one held.

    Entered while an exception is being handled (a rollback), held signals are dropped instead: the
    process is stopping already, and a second signal must not cut the rollback short.
    """
    if not _main_thread():
        yield
        return
    held: list[int] = []
    unwinding = sys.exc_info()[1] is not None

    def hold(signum: int, _frame: FrameType | None) -> None:
        held.append(signum)

    previous = {s: signal.signal(s, hold) for s in STOPPING}
    try:
        yield
    except BaseException:
        unwinding = True
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if held and not unwinding:
            # Delivered again to whatever handles it outside: `Interrupted`, the agent's stop flag, or
            # the default action.
            signal.raise_signal(held[0])


def call_on_stop(stop: Callable[[], None]) -> None:
    """From now on SIGINT and SIGTERM call `stop`, for the rest of the process.

    `stop` runs in a signal handler, between two bytecodes of whatever the main thread was doing: it
    may set a flag, and must take no lock that the interrupted code could hold.
    """
    if not _main_thread():
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        stop()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handler)


def ignore_stopping() -> None:
    """From now on SIGINT, SIGTERM and SIGHUP do nothing: for a process that has finished stopping."""
    if _main_thread():
        for s in STOPPING:
            signal.signal(s, signal.SIG_IGN)
