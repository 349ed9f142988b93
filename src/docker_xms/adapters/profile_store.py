"""Where media-server profiles come from: the built-in ones shipped in `docker_xms/profiles/`, and the
users' own TOML files in the settings' profile directories (~/.config/docker-xms/profiles/,
DOCKER_XMS_PROFILE_PATH).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from docker_xms.domain.profiles import Profile, parse_profile
from docker_xms.errors import BadInput, NotFound


def _builtin_texts() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    folder = resources.files("docker_xms") / "profiles"
    for entry in folder.iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name[: -len(".toml")]] = (entry.read_text("utf-8"), f"(built-in) {entry.name}")
    return out


def _user_files(search: Sequence[Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for directory in reversed(search):
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                out[path.stem] = path
    return out


def load_profile(name_or_path: str, search: Sequence[Path] = (), installed_only: bool = False) -> Profile:
    """A profile by name or by the path of a TOML file.

    Names are looked up in the `search` directories (the settings' profile_dirs), first match first,
    then among the built-in profiles, which files of the same name shadow. With `installed_only` (a name
    a container's label gives), a path is refused: a container never makes docker-xms read a file.
    """
    if installed_only and (name_or_path.endswith(".toml") or "/" in name_or_path or name_or_path.startswith(".")):
        raise BadInput(f"{name_or_path[:70]!r} is not the name of an installed profile.")
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise BadInput(f"Cannot read profile file {path}: {exc.strerror}.") from None
        return parse_profile(text, str(path))
    user = _user_files(search)
    if name_or_path in user:
        path = user[name_or_path]
        return parse_profile(path.read_text("utf-8"), str(path))
    builtin = _builtin_texts()
    if name_or_path in builtin:
        text, source = builtin[name_or_path]
        return parse_profile(text, source)
    known = ", ".join(sorted(set(builtin) | set(user)))
    raise NotFound(f"There is no profile named {name_or_path!r}; known profiles: {known}.")


def list_profiles(search: Sequence[Path] = ()) -> list[Profile]:
    names = sorted(set(_builtin_texts()) | set(_user_files(search)))
    return [load_profile(name, search) for name in names]
