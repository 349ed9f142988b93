"""`interruptible`: the first stopping signal stops the command; none after it can cut its exit short."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from docker_xms.adapters.signals import STOPPING, interruptible
from docker_xms.errors import Interrupted


@pytest.fixture(autouse=True)
def _handlers_back() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in STOPPING}
    yield None
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_without_a_signal_the_handlers_are_given_back() -> None:
    before = {s: signal.getsignal(s) for s in STOPPING}
    with interruptible():
        assert all(signal.getsignal(s) is not before[s] for s in STOPPING)
    assert {s: signal.getsignal(s) for s in STOPPING} == before


def test_after_the_first_signal_the_others_are_ignored_until_the_exit() -> None:
    with pytest.raises(Interrupted) as raised, interruptible():
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs as soon as kill returns
    assert raised.value.exit_code == 128 + signal.SIGTERM
    assert raised.value.message == "Stopped by SIGTERM."
    assert {s: signal.getsignal(s) for s in STOPPING} == dict.fromkeys(STOPPING, signal.SIG_IGN)
    # A SIGHUP now (the test sends them every 10 ms during a rollback) would have killed the process.
    os.kill(os.getpid(), signal.SIGHUP)
