"""The `docker-xms` command line.

Commands are loaded only when invoked so that `docker-xms --help` starts fast: each entry below names
the module and attribute of a Click command, and the line `--help` shows for it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, NamedTuple

import click

from docker_xms import __version__
from docker_xms.errors import Interrupted, XmsError


class Entry(NamedTuple):
    module: str
    attribute: str
    # Shown by `docker-xms --help` without importing the command's module.
    short_help: str


COMMANDS: dict[str, Entry] = {
    "build-base": Entry("docker_xms.cli.images", "build_base", "Build a base image that boots full systemd."),
    "build": Entry("docker_xms.cli.images", "build", "Build a media-server image from a profile's recipe."),
    "flatten": Entry("docker_xms.cli.images", "flatten", "Squash an image to one layer, keeping its configuration."),
    "push": Entry("docker_xms.cli.images", "push", "Push an image to its registry with per-layer progress."),
    "login": Entry("docker_xms.cli.images", "login", "Log in to a registry (wraps `docker login`)."),
    "run": Entry("docker_xms.cli.containers", "run", "Start a media-server container with its real-time budget."),
    "ps": Entry("docker_xms.cli.listing", "ps", "List the media-server containers docker-xms manages."),
    "shell": Entry("docker_xms.cli.containers", "shell", "Open a shell inside a container, with its own privileges."),
    "start": Entry("docker_xms.cli.containers", "start", "Start stopped containers again with their real-time budget."),
    "stop": Entry("docker_xms.cli.containers", "stop", "Stop containers and rebalance the others' budgets."),
    "rm": Entry("docker_xms.cli.containers", "rm", "Remove containers and rebalance the others' budgets."),
    "route": Entry("docker_xms.cli.containers", "route", "Show the static route that reaches container addresses."),
    "gate": Entry(
        "docker_xms.cli.containers",
        "gate",
        "Print the PID 1 gate that waits for docker-xms to open a container's systemd cgroup.",
    ),
    "profiles": Entry("docker_xms.cli.containers", "profiles", "List the media-server profiles."),
    "rt": Entry("docker_xms.cli.rt", "rt", "Real-time CPU budgets: status, rebalance, verify, doctor, probe."),
    "agent": Entry("docker_xms.cli.agent", "agent", "Keep budgets and port rules right as containers come and go."),
    "top": Entry("docker_xms.cli.top", "top", "Live view of budgets, real-time threads, readiness and port rules."),
    "test-call": Entry(
        "docker_xms.cli.testcall",
        "test_call",
        "Place a short test call through a container: answered, packets, jitter.",
    ),
    "compose": Entry(
        "docker_xms.cli.fleet", "compose", "Print a Compose/stack file of a profile's service for a fleet."
    ),
    "node": Entry(
        "docker_xms.cli.fleet", "node", "This host as a fleet node: the engine setting for its real-time pool."
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(target.module)
        command: click.Command = getattr(module, target.attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name].short_help) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="docker-xms")
@click.option("--debug", is_flag=True, envvar="DOCKER_XMS_DEBUG", help="Show tracebacks on errors.")
def cli(debug: bool) -> None:
    """docker-xms runs real-time media servers in containers: real-time CPU budgets granted by the
    host and split among all media containers, media port ranges without a proxy per port, and proof
    that real-time scheduling works inside each container."""
    # --debug is read by main(), which shows a traceback instead of the one-sentence error.


def main(argv: list[str] | None = None) -> Any:
    args = sys.argv[1:] if argv is None else argv
    # As a Docker CLI plugin we are invoked as `docker-xms xms ARGS...`.
    prog = os.path.basename(sys.argv[0])
    if prog == "docker-xms" and args[:1] == ["docker-cli-plugin-metadata"]:
        from docker_xms.cli.plugin import print_metadata

        print_metadata()
        return 0
    # As a plugin, the docker CLI passes the plugin's own name first; no command is named "xms".
    if args[:1] == ["xms"]:
        args = args[1:]
    try:
        return cli.main(args=args, prog_name="docker-xms", standalone_mode=False)
    except click.exceptions.Abort as exc:
        # Click turns Ctrl-C into Abort; SIGTERM and SIGHUP arrive the same way, as `Interrupted`.
        if isinstance(exc.__cause__, Interrupted):
            # What there was to undo is undone; more signals would only cut the exit short.
            from docker_xms.cli import context

            context.ignore_stopping()
            click.echo(exc.__cause__.message, err=True)
            sys.exit(exc.__cause__.exit_code)
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except XmsError as exc:
        if "--debug" in args or os.environ.get("DOCKER_XMS_DEBUG"):
            raise
        from docker_xms.cli.render import error

        error(exc.message)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
