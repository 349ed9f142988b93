"""The lab host: a fresh Debian 13 machine booted under QEMU once per session (see lab/vm.py).

Its disk is built on first use and cached while the recipe stays the same; every session boots it anew
from a throwaway overlay, so the tests see a host exactly as its packages install it.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab.vm import Guest, GuestRecipe, ensure_image

BUSYBOX_IMAGE = "docker-xms-test/busybox:latest"
# The base system as Debian's installer leaves it (and the lab's own: a kernel, sshd, CA certificates): the
# README's first command installs everything else, as it does on a fresh machine.
DEBIAN13 = GuestRecipe(name="debian13", suite="trixie", packages=())


# Debian's next release, whose engine (Docker 28) makes a container's own cgroup writable on request. Its
# Release file in the mirror is past its Valid-Until date: apt is told to take it anyway (in the guest too).
FORKY = GuestRecipe(
    name="forky",
    suite="forky",
    packages=("docker.io", "docker-cli"),
    apt_options=('Acquire::Check-Valid-Until "false"',),
)


# Debian 13 with Podman as its operator installs it (`apt install podman` brings D-Bus, which crun's systemd
# cgroup manager needs), serving the Docker API on its socket; no Docker Engine.
PODMAN = GuestRecipe(name="podman", suite="trixie", packages=("podman", "dbus"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """DOCKER_XMS_LAB=0 skips the lab's machines, saying so (`-m "not lab"` leaves them out silently)."""
    if os.environ.get("DOCKER_XMS_LAB", "1") != "0":
        return
    skip = pytest.mark.skip(reason="lab hosts not booted: DOCKER_XMS_LAB=0 (they take about 20 minutes)")
    for item in items:
        if item.get_closest_marker("lab") is not None:
            item.add_marker(skip)


def _booted(recipe: GuestRecipe) -> Iterator[Guest]:
    """The recipe's machine, booted for one test module (each module's guest is powered off before the next
    one boots, so two never share this host's memory and cores)."""
    print()
    started = time.monotonic()
    image, built = ensure_image(recipe, say=print)
    print(
        f"lab: {recipe.name} image {'built' if built else 'found'} in {time.monotonic() - started:.0f} s ({image.dir})"
    )
    with Guest(image) as guest:
        print(f"lab: {recipe.name} booted in {guest.boot_seconds:.0f} s (ssh on 127.0.0.1:{guest.port})")
        yield guest
        started = time.monotonic()
    print(f"lab: {recipe.name} powered off in {time.monotonic() - started:.0f} s")


@pytest.fixture(scope="module")
def debian13() -> Iterator[Guest]:
    yield from _booted(DEBIAN13)


@pytest.fixture(scope="module")
def forky() -> Iterator[Guest]:
    yield from _booted(FORKY)


@pytest.fixture(scope="module")
def podman() -> Iterator[Guest]:
    yield from _booted(PODMAN)


@pytest.fixture(scope="session")
def host_busybox() -> str:
    """A tiny image on the host's engine, imported from the host's static busybox if it is not there yet."""
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("the host's Docker engine does not answer: start dockerd and run the lab tests again")
    if subprocess.run(["docker", "image", "inspect", BUSYBOX_IMAGE], capture_output=True).returncode != 0:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(Path("/bin/busybox")), arcname="bin/busybox")
        subprocess.run(["docker", "import", "-", BUSYBOX_IMAGE], input=buf.getvalue(), capture_output=True, check=True)
    return BUSYBOX_IMAGE
