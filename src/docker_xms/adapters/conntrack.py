"""The kernel's connection tracking table, through the `conntrack` command (Debian's conntrack package).

NAT is decided once per flow, at its first packet, and conntrack keeps the decision until the entry times
out (30 s for UDP one way, 120 s once both ways have been seen, renewed by every packet). An entry made
before a forward existed (a peer already sending to the port), or by its previous holder (a removed
container, a plan that moved), keeps steering that flow past the new rules: a stream that never stops,
as RTP does not, would never reach its new container. So when a forward comes or goes, the entries of its
ports are deleted, and the next packet of each flow is NATed by the rules as they now are.

Only entries of the forward's own ports are touched: a peer's flow to one of its host ports at an address
of this host, a flow the host sent out from one of them (the reply comes back to it), and the container's
own flows from its range. The host's own outgoing connections to a remote port that happens to be in the
range are left alone.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from docker_xms.adapters import hostnet
from docker_xms.domain.forwards import DnatForward


@dataclass(frozen=True)
class Tuple:
    """One direction of a tracked flow."""

    src: str
    dst: str
    sport: int
    dport: int


@dataclass(frozen=True)
class Entry:
    protocol: str
    original: Tuple
    reply: Tuple


def parse_entries(text: str) -> list[Entry]:
    """Entries from `conntrack -L` output; lines of another shape (ICMP, the count line) are skipped."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] not in ("udp", "tcp"):
            continue
        fields: list[dict[str, str]] = [{}, {}]
        side = 0
        for word in words[2:]:
            key, eq, value = word.partition("=")
            if not eq or key not in ("src", "dst", "sport", "dport"):
                continue
            if key in fields[side]:
                side += 1
                if side > 1:
                    break
            fields[side][key] = value
        try:
            original, reply = (Tuple(f["src"], f["dst"], int(f["sport"]), int(f["dport"])) for f in fields)
        except (KeyError, ValueError):
            continue
        out.append(Entry(words[0], original, reply))
    return out


def stale(entries: Sequence[Entry], forwards: Sequence[DnatForward], local: Callable[[str], bool]) -> list[Entry]:
    """The entries that belong to one of the forwards' ports (see the module's docstring)."""

    def hit(entry: Entry, f: DnatForward) -> bool:
        o, r = entry.original, entry.reply
        host = range(f.host_start, f.host_end + 1)
        inside = range(f.container_start, f.container_end + 1)
        return (
            (o.dport in host and local(o.dst))
            or (r.dport in host and local(r.dst))
            or (bool(f.container_ip) and o.src == f.container_ip and o.sport in inside)
        )

    return [e for e in entries if any(e.protocol == f.protocol and hit(e, f) for f in forwards)]


class Conntrack:
    """Deletes the entries of forwarded ports. Without the `conntrack` command, it does nothing."""

    def __init__(
        self,
        command: str = "conntrack",
        timeout: float = 10.0,
        is_local: Callable[[str], bool] | None = None,
    ) -> None:
        self.command = command
        self.timeout = timeout
        self._is_local = is_local

    def available(self) -> bool:
        return shutil.which(self.command) is not None

    def forget(self, forwards: Sequence[DnatForward]) -> list[Entry]:
        """Delete the entries of the forwards' ports; the ones deleted (gone already counts as deleted)."""
        if not forwards or not self.available():
            return []
        local = self._is_local if self._is_local is not None else hostnet.LocalAddresses.read().holds
        doomed = []
        for protocol in sorted({f.protocol for f in forwards}):
            listed = self._run(["-L", "-p", protocol])
            doomed += stale(parse_entries(listed.stdout if listed else ""), forwards, local)
        for entry in doomed:
            o = entry.original
            self._run(
                ["-D", "-p", entry.protocol, "-s", o.src, "-d", o.dst, "--sport", str(o.sport), "--dport", str(o.dport)]
            )
        return doomed

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
        try:
            # Exit 1 with nothing listed or deleted: an entry may time out between the list and the delete.
            return subprocess.run(
                [self.command, *args], capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
