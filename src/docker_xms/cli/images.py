"""Image commands: build-base, build."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.markup import escape
from rich.status import Status

from docker_xms.cli.render import console, human_size
from docker_xms.domain.recipes import DISTROS


class StatusReporter:
    """Shows the current phase with a spinner and the latest line of detail under it."""

    def __init__(self, status: Status) -> None:
        self._status = status
        self._phase = ""

    def phase(self, text: str) -> None:
        if self._phase:
            console.print(f"[green]✓[/] {escape(self._phase)}")
        self._phase = text
        self._status.update(escape(text))

    def detail(self, text: str) -> None:
        line = text.strip().splitlines()[-1] if text.strip() else ""
        self._status.update(f"{escape(self._phase)}\n  [dim]{escape(line[:120])}[/]")

    def done(self) -> None:
        if self._phase:
            console.print(f"[green]✓[/] {escape(self._phase)}")
            self._phase = ""


@contextmanager
def reporting() -> Iterator[StatusReporter]:
    with console.status("Starting") as status:
        reporter = StatusReporter(status)
        yield reporter
        reporter.done()


@click.command("build-base")
@click.option("-t", "--tag", required=True, help="Name of the image to build, e.g. docker-xms/debian12-systemd.")
@click.option("--distro", type=click.Choice(DISTROS), default="debian12", show_default=True)
@click.option("--offline", is_flag=True, help="Build the root file system with mmdebstrap (debian12 only).")
def build_base(tag: str, distro: str, offline: bool) -> None:
    """Build a base image that boots full systemd in a container.

    Where a registry answers, the distro's official image plus systemd; with --offline (and for
    debian12 whenever no registry answers) a root file system made by mmdebstrap from this host's apt
    configuration.
    """
    from docker_xms.adapters.engine import Engine
    from docker_xms.domain.names import parse_ref
    from docker_xms.usecases.images import build_base as build

    parse_ref(tag, allow_digest=False)
    engine = Engine.connect()
    with reporting() as reporter:
        image = build(engine, tag, distro, offline, reporter)
    console.print(f"Built {image.ref} ({image.id[7:19]}, {human_size(image.size)}) from {image.how}.")


@click.command("build")
@click.option(
    "-p",
    "--profile",
    "profile_name",
    default="rtpengine",
    show_default=True,
    help="Media-server profile whose recipe to build.",
)
@click.option("-t", "--tag", default=None, help="Name of the image (default: the profile's image).")
@click.option("--if-missing", is_flag=True, help="Do nothing if an image from the same recipe exists.")
def build(profile_name: str, tag: str | None, if_missing: bool) -> None:
    """Build a media-server image from a profile's recipe (e.g. the rtpengine demo)."""
    from docker_xms.adapters.engine import Engine
    from docker_xms.domain.names import parse_ref
    from docker_xms.domain.profiles import load_profile
    from docker_xms.usecases.images import build_profile_image

    profile = load_profile(profile_name)
    if tag is not None:
        parse_ref(tag, allow_digest=False)
    engine = Engine.connect()
    with reporting() as reporter:
        image = build_profile_image(engine, profile, tag, reporter, reuse=if_missing)
    verb = "Reused" if image.reused else "Built"
    console.print(f"{verb} {image.ref} ({image.id[7:19]}, {human_size(image.size)}) from {image.how}.")
