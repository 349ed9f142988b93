"""Docker CLI plugin metadata: `docker xms ...` runs docker-xms."""

from __future__ import annotations

import json

from docker_xms import __version__


def print_metadata() -> None:
    print(
        json.dumps(
            {
                "SchemaVersion": "0.1.0",
                "Vendor": "docker-xms",
                "Version": __version__,
                "ShortDescription": "Run real-time media servers with real-time CPU budgets",
                "URL": "https://github.com/docker-xms/docker-xms",
            }
        )
    )
