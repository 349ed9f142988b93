"""Flattening an image: which parts of its configuration become which Dockerfile instructions.

The same instruction lines serve as `import` changes and as lines of a metadata-only Dockerfile
(`FROM <imported>` plus instructions that add no layer), because both go through the engine's
Dockerfile parser. Engines differ in which instructions an import accepts (20.10 refuses STOPSIGNAL),
so each line carries its keyword and the caller splits them by what its engine accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from docker_xms.errors import BadInput

# The parts of an image's configuration a flattened image keeps, as the engine's inspect names them.
FIELDS = (
    "Cmd",
    "Entrypoint",
    "Env",
    "ExposedPorts",
    "WorkingDir",
    "User",
    "Labels",
    "Volumes",
    "StopSignal",
    "Healthcheck",
)

_REFUSED = re.compile(r"\b([A-Za-z]+) is not a valid change command")
_ENV_KEY = re.compile(r"^[^\s=\"'$\\]+$")
_DURATIONS = (("h", 3600 * 10**9), ("m", 60 * 10**9), ("s", 10**9), ("ms", 10**6), ("us", 10**3), ("ns", 1))


@dataclass(frozen=True)
class Change:
    """One Dockerfile instruction line and its keyword (e.g. `STOPSIGNAL`)."""

    keyword: str
    line: str


def quote(value: str) -> str:
    """A double-quoted Dockerfile word that the engine reads back as exactly `value`.

    Inside double quotes the parser treats only `\\`, `"` and `$` specially, and it expands variables
    in ENV, LABEL, WORKDIR, USER and STOPSIGNAL: escaping those three keeps the value literal.
    """
    if "\n" in value or "\r" in value:
        raise BadInput(f"{value[:40]!r} holds a line break, which a Dockerfile line cannot carry.")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def exec_form(args: Sequence[str]) -> str:
    """A JSON array, which the parser takes as exec form and does not expand."""
    return json.dumps(list(args))


def duration(ns: int) -> str:
    """A Go duration string for a count of nanoseconds, in the largest unit that divides it."""
    for unit, size in _DURATIONS:
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


def healthcheck_line(check: Mapping[str, Any]) -> str:
    test = list(check.get("Test") or [])
    if not test:
        raise BadInput("The image's healthcheck sets options without a test, which a Dockerfile cannot express.")
    if test[0] == "NONE":
        return "HEALTHCHECK NONE"
    options = []
    for flag, key in (
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
        ("start-interval", "StartInterval"),
    ):
        value = int(check.get(key) or 0)
        # Zero means "the engine's default", which is what an absent flag gives.
        if value:
            options.append(f"--{flag}={duration(value)}")
    retries = int(check.get("Retries") or 0)
    if retries:
        options.append(f"--retries={retries}")
    head = " ".join(["HEALTHCHECK", *options, "CMD"])
    if test[0] == "CMD":
        return f"{head} {exec_form(test[1:])}"
    if test[0] == "CMD-SHELL" and len(test) == 2:
        shell = str(test[1])
        # The shell form is taken verbatim: a line break or a trailing backslash would change the line.
        if "\n" in shell or "\r" in shell or shell.rstrip().endswith("\\") or not shell.strip():
            raise BadInput(f"The image's healthcheck command {shell[:40]!r} cannot be written on one Dockerfile line.")
        return f"{head} {shell}"
    raise BadInput(f"The image's healthcheck test {test!r} is not one a Dockerfile can express.")


def changes_for(config: Mapping[str, Any]) -> list[Change]:
    """The instructions that give an image with an empty configuration this `config`.

    ENTRYPOINT comes before CMD: a later ENTRYPOINT would clear a CMD that was set before it.
    """
    out: list[Change] = []
    env = config.get("Env") or []
    for entry in env:
        key, sep, value = str(entry).partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise BadInput(f"The image's environment entry {entry!r} cannot be written as an ENV line.")
        out.append(Change("ENV", f"ENV {key}={quote(value)}"))
    labels = config.get("Labels") or {}
    for key, value in labels.items():
        out.append(Change("LABEL", f"LABEL {quote(str(key))}={quote(str(value))}"))
    ports = config.get("ExposedPorts") or {}
    if ports:
        out.append(Change("EXPOSE", "EXPOSE " + " ".join(sorted(ports))))
    volumes = config.get("Volumes") or {}
    if volumes:
        out.append(Change("VOLUME", "VOLUME " + exec_form(sorted(volumes))))
    if config.get("WorkingDir"):
        out.append(Change("WORKDIR", f"WORKDIR {quote(str(config['WorkingDir']))}"))
    if config.get("User"):
        out.append(Change("USER", f"USER {quote(str(config['User']))}"))
    if config.get("StopSignal"):
        out.append(Change("STOPSIGNAL", f"STOPSIGNAL {quote(str(config['StopSignal']))}"))
    if config.get("Healthcheck"):
        out.append(Change("HEALTHCHECK", healthcheck_line(config["Healthcheck"])))
    if config.get("Entrypoint") is not None:
        out.append(Change("ENTRYPOINT", "ENTRYPOINT " + exec_form(config["Entrypoint"])))
    if config.get("Cmd") is not None:
        out.append(Change("CMD", "CMD " + exec_form(config["Cmd"])))
    return out


def split_changes(changes: Iterable[Change], refused: Iterable[str]) -> tuple[list[Change], list[Change]]:
    """(changes the import takes, changes left for the metadata-only Dockerfile), order kept.

    CMD always follows ENTRYPOINT into the Dockerfile when ENTRYPOINT goes there, or the later
    ENTRYPOINT would clear it.
    """
    refused_set = {k.upper() for k in refused}
    if "ENTRYPOINT" in refused_set:
        refused_set.add("CMD")
    now: list[Change] = []
    later: list[Change] = []
    for change in changes:
        (later if change.keyword in refused_set else now).append(change)
    return now, later


def refused_keyword(message: str) -> str | None:
    """The instruction an engine named when it refused an import change, e.g. `STOPSIGNAL`."""
    match = _REFUSED.search(message)
    return match.group(1).upper() if match else None


def metadata_dockerfile(from_ref: str, changes: Sequence[Change]) -> str:
    return "\n".join([f"FROM {from_ref}", *(c.line for c in changes), ""])


def _normal(field: str, value: Any) -> Any:
    # The engine reports an unset list or map as null, an empty one as []/{} depending on the path taken.
    if value in (None, [], {}, ""):
        return None
    if field in ("ExposedPorts", "Volumes") and isinstance(value, dict):
        return sorted(value)
    return value


def config_differences(source: Mapping[str, Any], flat: Mapping[str, Any]) -> list[str]:
    """The fields of FIELDS whose values differ between two image configurations."""
    return [f for f in FIELDS if _normal(f, source.get(f)) != _normal(f, flat.get(f))]
