"""Files on the host that use cases read or write: installers, rendered files, the agent's unit, the
probe's cache. One place for the I/O and for turning an OSError into one sentence."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from docker_xms.errors import BadInput, XmsError


def load_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(f"Cannot read {path}: {exc.strerror or exc}.") from None


def save_text(path: Path, text: str, mode: int | None = None) -> None:
    """Write a file, creating its directory; `mode` sets its permission bits (else the old file's, or 0644).

    Atomically: the text goes to a new file beside it, flushed to disk, which then replaces the old one.
    A process killed in the middle, or a full disk, leaves the old file whole (a dockerd that would not
    start on a half-written daemon.json, a unit cut short).
    """
    save_bytes(path, text.encode(), mode)


def save_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """`save_text` for bytes."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if mode is None:
            mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        finally:
            if temporary.exists():
                temporary.unlink()
    except OSError as exc:
        raise XmsError(f"Could not write {path}: {exc.strerror or exc}; run as root.") from None


def owned_by_us(*paths: Path) -> bool:
    """Whether each path that exists belongs to this process's user and no one else may write it (no group or
    other write bit): a file from it can be run with this process's privileges."""
    for path in paths:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        except OSError:
            return False
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            return False
    return True


def package_asset(relative: str) -> bytes:
    """A file shipped inside the package (src/docker_xms/<relative>)."""
    return resources.files("docker_xms").joinpath(relative).read_bytes()


def user_cache_dir() -> Path:
    """docker-xms's folder in the user's cache ($XDG_CACHE_HOME, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "docker-xms"


def package_files() -> dict[str, bytes]:
    """Every file of the installed docker_xms package (sources, profiles, assets) by its path inside it.

    Byte-compiled caches are left out: the interpreter that runs the copy makes its own.
    """
    root = Path(str(resources.files("docker_xms")))
    out: dict[str, bytes] = {}
    try:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                out[path.relative_to(root).as_posix()] = path.read_bytes()
    except OSError as exc:
        raise XmsError(f"Cannot read docker-xms's own files under {root}: {exc.strerror or exc}.") from None
    return out
