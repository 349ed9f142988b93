"""The media port pool: the only host ports docker-xms forwards to containers, and the sources it adopts from.

Every host media range a forward takes comes from the pool (the `media_port_pool` setting): a `-c`
container's block, a 1:1 range, an adopted container's plan. Nothing a container carries can name a
port outside it. The default holds the built-in profiles' 1:1 ranges (janus 20000-20999, rtpengine and
sip 30000-30999, XMS 49152-53152 and 57344-57840) and the block `-c` containers get theirs from
(10000-32767, below the kernel's ephemeral range, from which the engine picks the host ports it publishes).
No pool reaches below 1024, where the host's own services listen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from docker_xms.errors import BadInput

DEFAULT_MEDIA_PORT_POOL = "10000-32767,49152-53152,57344-57840"
LOWEST = 1024

Span = tuple[int, int]

# Where adopted containers come from (see domain/adoption.origin): a Compose service, a Swarm task, or a
# plain `docker run --label io.docker-xms.managed=true`.
ADOPT_SOURCES = ("compose", "swarm", "docker")
DEFAULT_ADOPT = ",".join(ADOPT_SOURCES)


def parse_pool(text: str, where: str = "media_port_pool") -> tuple[Span, ...]:
    """The pool's ranges, merged and sorted, from "10000-32767,49152-53152" (a single port is "N")."""
    spans: list[Span] = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", part)
        if match is None:
            raise BadInput(f"{where} {text!r} must be port ranges such as 10000-32767,49152-53152.")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if not LOWEST <= low <= high <= 65535:
            raise BadInput(f"{where}: {part} must lie within {LOWEST}-65535, low to high.")
        spans.append((low, high))
    return tuple(merge(spans))


def merge(spans: Iterable[Span]) -> list[Span]:
    out: list[Span] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def holds(pool: Sequence[Span], low: int, high: int) -> bool:
    """Whether every port of low-high is in the pool."""
    return any(a <= low and high <= b for a, b in pool)


def allocation_block(pool: Sequence[Span], ephemeral_low: int) -> Span:
    """Where `-c` containers' blocks are found: the widest stretch of the pool below the ephemeral range."""
    below = [(a, min(b, ephemeral_low - 1)) for a, b in pool if a < ephemeral_low]
    if not below:
        raise BadInput(
            f"The media port pool has no ports below {ephemeral_low}, where the engine's own picks never land; "
            "add a range such as 10000-32767 to media_port_pool."
        )
    return max(below, key=lambda s: (s[1] - s[0], -s[0]))


def parse_adopt(text: str, where: str = "adopt") -> tuple[str, ...]:
    """The sources adopted from: some of compose, swarm, docker; "none" for none."""
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    if words == ("none",):
        return ()
    unknown = [w for w in words if w not in ADOPT_SOURCES]
    if unknown or not words:
        raise BadInput(f"{where} {text!r} must be none, or some of {', '.join(ADOPT_SOURCES)} (comma-separated).")
    return words
