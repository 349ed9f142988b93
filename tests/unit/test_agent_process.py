"""The agent's process: options that cannot work together are refused before it starts, and SIGTERM or
SIGINT only ask it to stop."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from docker_xms.adapters.signals import STOPPING, call_on_stop
from docker_xms.errors import BadInput
from docker_xms.usecases.agent import AgentRequest


@pytest.fixture(autouse=True)
def _handlers_back() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in STOPPING}
    yield None
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        (
            {"once": True, "cpu_latency_us": 0},
            "--cpu-latency-us holds a limit while the agent runs; with --once it would do nothing.",
        ),
        (
            {"once": True, "metrics": "9100"},
            "--metrics serves while the agent runs; with --once it would serve nothing.",
        ),
        (
            {"probe_every": 5.0},
            "--probe-every serves its histograms with the metrics: give it with --metrics.",
        ),
        (
            {"no_reconcile": True},
            "--no-reconcile leaves only the metrics to serve: give it with --metrics, without --once.",
        ),
    ],
)
def test_options_that_cannot_work_together_are_refused_as_bad_input(options: dict[str, Any], sentence: str) -> None:
    with pytest.raises(BadInput) as refused:
        AgentRequest(**options)
    assert refused.value.message == sentence
    assert refused.value.exit_code == 2


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"once": True},
        {"cpu_latency_us": 0, "linger": 60.0},
        {"metrics": "127.0.0.1:9100", "probe_every": 5.0},
        {"metrics": "9100", "no_reconcile": True},
    ],
)
def test_options_that_work_together_make_a_request(options: dict[str, Any]) -> None:
    AgentRequest(**options)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopping_signal_only_asks_the_agent_to_stop(signum: int) -> None:
    asked: list[bool] = []
    call_on_stop(lambda: asked.append(True))
    os.kill(os.getpid(), signum)  # its handler runs as soon as kill returns
    assert asked == [True]
    # Asked again, it is asked again: a second SIGTERM ends an agent that lingers.
    os.kill(os.getpid(), signum)
    assert asked == [True, True]
