"""Netfilter: one DNAT rule per media range, in chains docker-xms owns, via the `iptables` command.

Per forwarded range there are three rules, each commented ``docker-xms:<container-id-12>:<name>`` so
they can be listed and removed per container:

- nat ``DOCKER-XMS`` (jumped to first from PREROUTING and OUTPUT for local destinations): the DNAT.
  ``--to-destination ip:A-B/base`` shifts each port by the same offset; without the base port the kernel
  would pick any free port of the range, not the matching one.
- nat ``DOCKER-XMS-POSTROUTING``: MASQUERADE for 127.0.0.0/8 sources, with ``route_localnet`` on the
  bridge, so 127.0.0.1:PORT reaches the container and the answer finds its way back.
- filter ``DOCKER-XMS-FORWARD`` (jumped to from DOCKER-USER, else FORWARD): ACCEPT for the forwarded
  traffic, which Docker's FORWARD policy would otherwise drop.

Rules for IPv4 only: the engine's default bridge has no IPv6.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from docker_xms.adapters.hostlock import host_lock
from docker_xms.errors import BadInput, XmsError

DEFAULT_LOCK = Path("/run/docker-xms/netfilter.lock")
DEFAULT_CHAIN = "DOCKER-XMS"
COMMENT_PREFIX = "docker-xms"

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ID = re.compile(r"^[0-9a-f]{12,64}$")
_OURS = re.compile(rf"^{COMMENT_PREFIX}:([0-9a-f]{{12}}):([A-Za-z0-9_.-]+)$")
# Longest chain name iptables accepts, minus the longest suffix used here.
_CHAIN_MAX = 28 - len("-POSTROUTING")


@dataclass(frozen=True)
class ForwardSpec:
    """Host ports host_start-host_end to container_ip's dest_start-dest_end, port for port."""

    name: str
    container_ip: str
    protocol: str
    host_start: int
    host_end: int
    dest_start: int
    dest_end: int


@dataclass(frozen=True)
class Forward:
    """A forward as netfilter holds it, with the container that owns it."""

    container_id: str
    spec: ForwardSpec


@dataclass(frozen=True)
class Reconciled:
    removed: tuple[str, ...]
    added: tuple[str, ...]


@dataclass(frozen=True)
class _Rule:
    table: str
    chain: str
    args: tuple[str, ...]

    def text(self) -> str:
        return shlex.join(["-t", self.table, "-A", self.chain, *self.args])


class Netfilter:
    """DNAT range forwards for containers; every change holds an flock on `lock_path`."""

    def __init__(
        self,
        lock_path: Path = DEFAULT_LOCK,
        bridge: str = "docker0",
        chain: str = DEFAULT_CHAIN,
        iptables: str = "iptables",
        timeout: float = 60.0,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", chain) or len(chain) > _CHAIN_MAX:
            raise BadInput(f"Chain name {chain!r} must be up to {_CHAIN_MAX} letters, digits, '-' or '_'.")
        self.lock_path = lock_path
        self.bridge = bridge
        self.iptables = iptables
        self.timeout = timeout
        self.nat_chain = chain
        self.post_chain = f"{chain}-POSTROUTING"
        self.filter_chain = f"{chain}-FORWARD"

    # Reading

    def available(self) -> bool:
        """Whether iptables is installed and this process may read and change the nat table."""
        if shutil.which(self.iptables) is None:
            return False
        try:
            return self._run("nat", ["-S", "PREROUTING"], check=False).returncode == 0
        except XmsError:
            return False

    def list_forwards(self) -> list[Forward]:
        out: list[Forward] = []
        for owner, args in self._owned("nat", self.nat_chain):
            spec = _parse_dnat(owner[1], args)
            if spec is not None:
                out.append(Forward(owner[0], spec))
        return out

    # Changing

    def ensure_chains(self) -> None:
        """Create the chains and jumps if missing and put the jumps first; safe to call on every start."""
        with self._locked():
            self._ensure_chains()

    def add_forward(
        self,
        container_id: str,
        container_ip: str,
        protocol: str,
        host_start: int,
        host_end: int,
        dest_start: int,
        dest_end: int,
        name: str = "media",
    ) -> None:
        spec = ForwardSpec(name, container_ip, protocol, host_start, host_end, dest_start, dest_end)
        self.add_container(container_id, [spec])

    def add_container(self, container_id: str, specs: Sequence[ForwardSpec]) -> None:
        """Add all of a container's forwards, or none: a failure removes the rules added before it."""
        cid = _short_id(container_id)
        rules = [rule for spec in specs for rule in self._rules(cid, spec)]
        with self._locked():
            self._add_all(rules)

    def remove_container(self, container_id: str) -> int:
        """Remove every rule of the container; returns how many there were."""
        cid = _short_id(container_id)
        with self._locked():
            return self._remove_owner(cid)

    def reconcile(self, live: Mapping[str, Sequence[ForwardSpec]]) -> Reconciled:
        """Make the rules match `live` (container id to its forwards): others' rules go, missing ones come."""
        wanted = {_short_id(cid): list(specs) for cid, specs in live.items()}
        planned = {cid: [rule for spec in specs for rule in self._rules(cid, spec)] for cid, specs in wanted.items()}
        removed: list[str] = []
        added: list[str] = []
        with self._locked():
            self._ensure_chains()
            counts: dict[str, list[int]] = {}
            for i, (table, chain) in enumerate(self._chains()):
                for (cid, _), _args in self._owned(table, chain):
                    counts.setdefault(cid, [0, 0, 0])[i] += 1
            have: dict[str, set[ForwardSpec]] = {}
            for (cid, name), args in self._owned("nat", self.nat_chain):
                spec = _parse_dnat(name, args)
                if spec is not None:
                    have.setdefault(cid, set()).add(spec)
            for cid in sorted(set(counts) - set(wanted)):
                self._remove_owner(cid)
                removed.append(cid)
            for cid, specs in wanted.items():
                n = len(specs)
                if have.get(cid, set()) == set(specs) and counts.get(cid, [0, 0, 0]) == [n, n, n]:
                    continue
                if cid in counts:
                    self._remove_owner(cid)
                self._add_all(planned[cid])
                added.append(cid)
        return Reconciled(tuple(removed), tuple(added))

    def remove_all(self) -> None:
        """Remove the jumps and the chains with all their rules."""
        with self._locked():
            ours = {self.nat_chain, self.post_chain, self.filter_chain}
            for table, builtin in (
                ("nat", "PREROUTING"),
                ("nat", "OUTPUT"),
                ("nat", "POSTROUTING"),
                ("filter", "DOCKER-USER"),
                ("filter", "FORWARD"),
            ):
                for args in self._rules_of(table, builtin):
                    if _target(args) in ours:
                        self._run(table, ["-D", builtin, *args])
            for table, chain in self._chains():
                if self._exists(table, chain):
                    self._run(table, ["-F", chain])
                    self._run(table, ["-X", chain])

    # Inside

    def _chains(self) -> tuple[tuple[str, str], ...]:
        return (("nat", self.nat_chain), ("nat", self.post_chain), ("filter", self.filter_chain))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with host_lock(self.lock_path, self.timeout):
            yield

    def _run(self, table: str, args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [self.iptables, "-w", str(int(self.timeout)), "-t", table, *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout + 5, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise XmsError(f"Could not run {shlex.join(command)}: {exc}.") from None
        if check and done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            reason = message[-1] if message else f"exit status {done.returncode}"
            raise XmsError(f"iptables refused '{shlex.join(['-t', table, *args])}': {reason.rstrip('.')}.")
        return done

    def _exists(self, table: str, chain: str) -> bool:
        return self._run(table, ["-S", chain], check=False).returncode == 0

    def _rules_of(self, table: str, chain: str) -> list[list[str]]:
        """The chain's rules as argument lists (without `-A CHAIN`); none if the chain does not exist."""
        done = self._run(table, ["-S", chain], check=False)
        if done.returncode != 0:
            return []
        out = []
        for line in done.stdout.splitlines():
            words = shlex.split(line)
            if len(words) >= 2 and words[0] == "-A":
                out.append(words[2:])
        return out

    def _owned(self, table: str, chain: str) -> list[tuple[tuple[str, str], list[str]]]:
        out = []
        for args in self._rules_of(table, chain):
            match = _OURS.match(_option(args, "--comment") or "")
            if match is not None:
                out.append(((match.group(1), match.group(2)), args))
        return out

    def _ensure_chains(self) -> None:
        for table, chain in self._chains():
            if not self._exists(table, chain):
                self._run(table, ["-N", chain])
        local = ["-m", "addrtype", "--dst-type", "LOCAL"]
        self._jump_first("nat", "PREROUTING", [*local, *_comment(self.nat_chain), "-j", self.nat_chain])
        self._jump_first("nat", "OUTPUT", [*local, *_comment(self.nat_chain), "-j", self.nat_chain])
        self._jump_first("nat", "POSTROUTING", [*_comment(self.post_chain), "-j", self.post_chain])
        forward = "DOCKER-USER" if self._exists("filter", "DOCKER-USER") else "FORWARD"
        self._jump_first("filter", forward, [*_comment(self.filter_chain), "-j", self.filter_chain])
        self._route_localnet()

    def _jump_first(self, table: str, builtin: str, jump: list[str]) -> None:
        """Make `jump` the chain's first rule, so Docker's own chains cannot take the traffic before us."""
        rules = self._rules_of(table, builtin)
        target = _target(jump)
        ours = [args for args in rules if _target(args) == target]
        if rules and rules[0] == jump and len(ours) == 1:
            return
        for args in ours:
            self._run(table, ["-D", builtin, *args])
        self._run(table, ["-I", builtin, "1", *jump])

    def _route_localnet(self) -> None:
        path = Path("/proc/sys/net/ipv4/conf") / self.bridge / "route_localnet"
        try:
            if path.read_text().strip() != "1":
                path.write_text("1\n")
        except FileNotFoundError:
            # No such bridge yet: only 127.0.0.1 would not be forwarded; outside traffic still is.
            return
        except OSError as exc:
            raise XmsError(f"Could not turn on route_localnet in {path}: {exc.strerror}.") from None

    def _rules(self, cid: str, spec: ForwardSpec) -> list[_Rule]:
        _check_spec(spec)
        comment = _comment(f"{COMMENT_PREFIX}:{cid}:{spec.name}")
        proto = ["-p", spec.protocol, "-m", spec.protocol]
        host = _span(spec.host_start, spec.host_end, ":")
        dest = _span(spec.dest_start, spec.dest_end, ":")
        to = f"{spec.container_ip}:{_span(spec.dest_start, spec.dest_end, '-')}"
        if spec.dest_start != spec.dest_end:
            to += f"/{spec.host_start}"
        ip = f"{spec.container_ip}/32"
        return [
            _Rule("nat", self.nat_chain, (*proto, "--dport", host, *comment, "-j", "DNAT", "--to-destination", to)),
            _Rule(
                "nat",
                self.post_chain,
                ("-s", "127.0.0.0/8", "-d", ip, *proto, "--dport", dest, *comment, "-j", "MASQUERADE"),
            ),
            # Only traffic that came through the DNAT: other bridge networks stay isolated from the container.
            _Rule(
                "filter",
                self.filter_chain,
                ("-d", ip, *proto, "--dport", dest, "-m", "conntrack", "--ctstate", "DNAT", *comment, "-j", "ACCEPT"),
            ),
        ]

    def _add_all(self, rules: Sequence[_Rule]) -> None:
        done: list[_Rule] = []
        try:
            for rule in rules:
                self._run(rule.table, ["-A", rule.chain, *rule.args])
                done.append(rule)
        except XmsError:
            for rule in reversed(done):
                self._run(rule.table, ["-D", rule.chain, *rule.args], check=False)
            raise

    def _remove_owner(self, cid: str) -> int:
        count = 0
        for table, chain in self._chains():
            for (owner, _), args in self._owned(table, chain):
                if owner == cid:
                    self._run(table, ["-D", chain, *args])
                    count += 1
        return count


def _short_id(container_id: str) -> str:
    if not _ID.match(container_id):
        raise BadInput(f"{container_id!r} is not a container id (12 to 64 lower-case hex digits).")
    return container_id[:12]


def _check_spec(spec: ForwardSpec) -> None:
    where = f"forward {spec.name} {spec.host_start}-{spec.host_end}/{spec.protocol}"
    if not _NAME.match(spec.name):
        raise BadInput(f"The name of {where} must be letters, digits, '.', '_' or '-'.")
    if spec.protocol not in ("udp", "tcp"):
        raise BadInput(f"The protocol of {where} must be udp or tcp.")
    try:
        ip = ipaddress.ip_address(spec.container_ip)
    except ValueError:
        raise BadInput(f"The container address {spec.container_ip!r} of {where} is not an IP address.") from None
    if ip.version != 4:
        raise BadInput(f"The container address {ip} of {where} is not IPv4; only IPv4 is forwarded.")
    for low, high in ((spec.host_start, spec.host_end), (spec.dest_start, spec.dest_end)):
        if not 1 <= low <= high <= 65535:
            raise BadInput(f"Ports {low}-{high} of {where} must lie within 1-65535, low to high.")
    if spec.host_end - spec.host_start != spec.dest_end - spec.dest_start:
        raise BadInput(f"The host and container ranges of {where} differ in size.")


def _span(low: int, high: int, sep: str) -> str:
    return str(low) if low == high else f"{low}{sep}{high}"


def _comment(text: str) -> list[str]:
    return ["-m", "comment", "--comment", text]


def _option(args: Sequence[str], name: str) -> str | None:
    for i, word in enumerate(args[:-1]):
        if word == name:
            return args[i + 1]
    return None


def _target(args: Sequence[str]) -> str | None:
    return _option(args, "-j")


def _parse_dnat(name: str, args: Sequence[str]) -> ForwardSpec | None:
    """A forward from a DNAT rule as `iptables -S` prints it; None for a rule of another shape."""
    protocol, dport, to = _option(args, "-p"), _option(args, "--dport"), _option(args, "--to-destination")
    if _target(args) != "DNAT" or protocol is None or dport is None or to is None:
        return None
    match = re.fullmatch(r"([0-9.]+):(\d+)(?:-(\d+))?(?:/(\d+))?", to)
    if match is None:
        return None
    low, _, high = dport.partition(":")
    dest_start = int(match.group(2))
    return ForwardSpec(
        name,
        match.group(1),
        protocol,
        int(low),
        int(high or low),
        dest_start,
        int(match.group(3) or dest_start),
    )
