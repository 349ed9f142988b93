"""Reading the settings: the config file, then the environment over it (see `docker_xms.settings`)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from docker_xms.domain.labels import owner_labels_problem
from docker_xms.domain.plan_unit import MAX_WAIT_S
from docker_xms.domain.pool import parse_adopt, parse_pool
from docker_xms.errors import BadInput
from docker_xms.settings import CONFIG_ENV, DEFAULT_CONFIG, KEYS, KEYS_BY_NAME, Key, Settings

# `ps --json` imports this module: typing is only for the type checker (its import costs the listing ~2 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DRIVERS = ("cgroupfs", "systemd")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings in force: defaults, the config file over them, the environment over that."""
    env = os.environ if environ is None else environ
    path = Path(env.get(CONFIG_ENV) or DEFAULT_CONFIG).absolute()
    values: dict[str, Any] = _read_file(path)
    overrides: list[tuple[str, str]] = []
    for key in KEYS:
        raw = env.get(key.env, "")
        if raw == "":
            continue
        value = _from_env(key, raw)
        values[key.name] = value
        overrides.append((key.env, _render(value)))
    settings = Settings(config_path=path, user_profiles=_user_profiles(env), overrides=tuple(overrides))
    return replace(settings, **values)


def _user_profiles(env: Mapping[str, str]) -> Path:
    config_home = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(config_home) / "docker-xms" / "profiles"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadInput(f"Cannot read the settings file {path}: {reason}.") from None
    import tomllib  # noqa: PLC0415 - only when there is a file to read

    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"The settings file {path} is not valid TOML: {exc}.") from None
    out: dict[str, Any] = {}
    for name, value in table.items():
        key = KEYS_BY_NAME.get(name)
        where = f"{path}, line {_line_of(text, name)}"
        if key is None:
            known = ", ".join(k.name for k in KEYS)
            raise BadInput(f"{where}: there is no setting {name!r} (known: {known}).")
        out[name] = _from_file(key, value, where)
    return out


def _line_of(text: str, name: str) -> int | str:
    pattern = re.compile(rf"""^\s*(\[\s*)?(["']?){re.escape(name)}\2\s*(=|\])""")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return "?"


def _from_file(key: Key, value: Any, where: str) -> Any:
    def wrong(expected: str) -> BadInput:
        return BadInput(f"{where}: {key.name} must be {expected}, not {value!r}.")

    if key.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong(f"a whole number{_unit(key)}")
        return _check_int(key, value, where)
    if key.kind == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if key.kind == "paths":
        if isinstance(value, str):
            value = value.split(":")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of directories")
        return tuple(Path(v).absolute() for v in value if v)
    if not isinstance(value, str) or (key.kind == "path" and not value):
        raise wrong("a path" if key.kind == "path" else "a string")
    if key.kind == "path":
        return Path(value).absolute()
    return _check_str(key, value, where)


def _from_env(key: Key, raw: str) -> Any:
    where = f"{key.env}"
    if key.kind == "int":
        try:
            number = int(raw)
        except ValueError:
            raise BadInput(f"{key.env} must be a whole number{_unit(key)}, not {raw!r}.") from None
        return _check_int(key, number, where)
    if key.kind == "bool":
        lowered = raw.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise BadInput(f"{key.env} must be 1 or 0 (true or false), not {raw!r}.")
        return lowered in _TRUE
    if key.kind == "paths":
        return tuple(Path(p).absolute() for p in raw.split(":") if p)
    if key.kind == "path":
        return Path(raw).absolute()
    return _check_str(key, raw, where)


def _units(key: Key) -> str:
    return " microseconds" if key.name.endswith("_us") else " seconds" if key.name.endswith("_s") else ""


def _unit(key: Key) -> str:
    return " of" + _units(key) if _units(key) else ""


def _check_int(key: Key, value: int, where: str) -> int:
    if value < 0:
        raise BadInput(f"{where}: {key.name} must be 0 or more{_units(key)}, not {value}.")
    if key.name == "plan_wait_s" and value > MAX_WAIT_S:
        raise BadInput(f"{where}: plan_wait_s must be at most {MAX_WAIT_S} seconds, not {value}.")
    return value


def _check_str(key: Key, value: str, where: str) -> str:
    if key.name == "cgroup_driver" and value not in DRIVERS:
        raise BadInput(f"{where}: cgroup_driver must be {' or '.join(DRIVERS)}, not {value!r}.")
    if key.name == "media_port_pool":
        parse_pool(value, where)
    if key.name == "adopt":
        parse_adopt(value, where)
    if key.name == "advertise" and value != "host":
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise BadInput(
                f"{where}: advertise must be host or an IPv4 address such as 203.0.113.10, not {value!r}."
            ) from None
    if key.name == "labels":
        problem = owner_labels_problem(filter(None, (part.strip() for part in value.split(","))))
        if problem is not None:
            raise BadInput(f"{where}: {problem}")
    return value


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ":".join(str(v) for v in value)
    return str(value)
