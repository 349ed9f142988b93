"""The `docker-xms` executable.

`ps --json` is what monitoring scripts call every few seconds, so it is answered here without loading the
command line (Click alone costs more than the listing itself); every other invocation, and any error of
this one, goes through `docker_xms.cli` as usual, so that its output and exit codes are the same.
"""

from __future__ import annotations

import sys


def main() -> int | str | None:
    args = sys.argv[1:]
    # As a Docker CLI plugin the command comes after the plugin's own name ("docker xms ps --json").
    if args in (["ps", "--json"], ["xms", "ps", "--json"]) and _ps_json():
        return 0
    from docker_xms.cli import main as cli_main  # noqa: PLC0415 - Click only when it is needed

    code: int | str | None = cli_main()
    return code


def _ps_json() -> bool:
    """Print `ps --json`; False when it could not, so that the command line reports why in its own way."""
    # Imported here so that every other command pays nothing for this one.
    from docker_xms.adapters.config import load_settings  # noqa: PLC0415
    from docker_xms.errors import XmsError  # noqa: PLC0415
    from docker_xms.usecases.listing import (  # noqa: PLC0415
        budget_reader,
        json_text,
        managed_summaries,
        plan_reader,
        ps,
    )

    try:
        settings = load_settings()
        text = json_text(ps(managed_summaries(settings), budget_reader(settings), plan_reader(settings)))
    except XmsError:
        return False
    print(text)
    return True
