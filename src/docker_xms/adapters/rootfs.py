"""mmdebstrap: a Debian root file system built offline from the host's own apt configuration."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from docker_xms.errors import BadInput, XmsError

UNIT_RE = re.compile(r"^[A-Za-z0-9@._:\\-]+\.(service|socket|target|mount|timer|path|slice|scope|automount)$")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")
SUITES = {"debian12": "bookworm"}


@dataclass(frozen=True)
class RootfsSpec:
    suite: str
    packages: tuple[str, ...]
    mask_units: tuple[str, ...] = ()
    enable_units: tuple[str, ...] = ()
    # (local file, absolute path inside the root file system)
    uploads: tuple[tuple[Path, str], ...] = field(default_factory=tuple)


def check_available() -> str:
    path = shutil.which("mmdebstrap")
    if path is None:
        raise BadInput("mmdebstrap is not installed: run `apt-get install mmdebstrap` and try again.")
    return path


def validate(spec: RootfsSpec) -> None:
    for package in spec.packages:
        if not PACKAGE_RE.match(package):
            raise BadInput(f"{package!r} is not a Debian package name.")
    for unit in (*spec.mask_units, *spec.enable_units):
        if not UNIT_RE.match(unit):
            raise BadInput(f"{unit!r} is not a systemd unit name.")
    for _, dest in spec.uploads:
        if not dest.startswith("/") or ".." in dest.split("/"):
            raise BadInput(f"{dest!r} is not an absolute path inside the image.")


def command(spec: RootfsSpec, output: Path) -> list[str]:
    """The mmdebstrap argument list; hooks hold only validated unit names and paths."""
    args = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=tar",
        f"--include={','.join(spec.packages)}",
        # Documentation and translations are dead weight in a server image.
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    ]
    # The recipe's files first: a unit the recipe itself writes can then be enabled like a package's.
    for local, dest in spec.uploads:
        args.append(f"--customize-hook=upload {local} {dest}")
    if spec.mask_units:
        args.append(f'--customize-hook=systemctl --root="$1" mask {" ".join(spec.mask_units)}')
    if spec.enable_units:
        args.append(f'--customize-hook=systemctl --root="$1" enable {" ".join(spec.enable_units)}')
    # The image's machine id must be made by each container, not shared by all of them.
    args.append('--customize-hook=rm -f "$1/etc/machine-id" "$1/var/lib/dbus/machine-id"; : > "$1/etc/machine-id"')
    args += [spec.suite, str(output)]
    return args


def build(spec: RootfsSpec, output: Path, on_line: Callable[[str], None] = lambda _: None) -> Path:
    """Run mmdebstrap, passing each line it prints to `on_line`; the tarball is written to `output`."""
    validate(spec)
    check_available()
    args = command(spec, output)
    tail: list[str] = []
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail = [*tail[-19:], line]
            on_line(line)
        code = proc.wait()
    if code != 0:
        output.unlink(missing_ok=True)
        log = "\n".join(tail)
        raise XmsError(f"mmdebstrap failed with exit code {code}; its last lines:\n{log}")
    return output


def suite_for(distro: str) -> str:
    try:
        return SUITES[distro]
    except KeyError:
        raise BadInput(f"Only {', '.join(sorted(SUITES))} can be built offline; {distro} needs a registry.") from None


def packages_with(base: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*base, *extra]))
