"""Every test here runs on the host's engine beside what already runs there: see tests/host_state.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _host_left_as_found(host_as_found: None) -> None:
    """Taken before the first test of this folder, checked after the last one of the run."""
