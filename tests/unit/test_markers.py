"""Every integration module that needs the Docker engine says so with the `engine` marker, so that
`pytest -m "not engine"` runs exactly the tests a machine without an engine can run."""

from __future__ import annotations

import re
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
# What a module uses when it needs the engine: the session's client fixtures, the CLI, the test images.
NEEDS_ENGINE = re.compile(r"\b(docker_client|engine_client|run_cli|rtpengine_image|sip_image|busybox_image)\b")
MARKED = re.compile(r"^pytestmark\s*=\s*(\[[^\]]*|[^\n]*)pytest\.mark\.engine\b", re.MULTILINE)


def test_every_integration_module_that_needs_the_engine_is_marked() -> None:
    unmarked = sorted(
        path.name
        for path in INTEGRATION.glob("test_*.py")
        if NEEDS_ENGINE.search(text := path.read_text()) and not MARKED.search(text)
    )
    assert not unmarked, f"needs the engine, no engine marker: {unmarked}"
