"""Every test here runs on the host's engine beside what already runs there: see tests/host_state.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from lab.peer_links import Outside


@pytest.fixture(scope="session", autouse=True)
def _host_left_as_found(host_as_found: None) -> None:
    """Taken before the first test of this folder, checked after the last one of the run."""


@pytest.fixture
def outside(docker_client: Any) -> Iterator[Outside]:
    """Network namespaces as remote machines: see lab.peer_links.Outside."""
    from lab.peer_links import Outside

    from tests.integration.test_sip_profile import bridge_subnet

    spaces = Outside(bridge_subnet(docker_client))
    try:
        yield spaces
    finally:
        spaces.close()


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Names of the containers a test starts, removed after it."""
    from tests.integration.test_media_ports import remove

    started: list[str] = []
    yield started
    for name in started:
        remove(name)
