"""Netfilter: one DNAT rule per media range, in chains docker-xms owns, via the `iptables` command.

Per forwarded range there are three or four rules, each commented ``docker-xms:<container-id-12>:<name>`` so
they can be listed and removed per container:

- nat ``DOCKER-XMS`` (jumped to first from PREROUTING and OUTPUT for local destinations): the DNAT.
  ``--to-destination ip:A-B/base`` shifts each port by the same offset; without the base port the kernel
  would pick any free port of the range, not the matching one.
- nat ``DOCKER-XMS-POSTROUTING``: MASQUERADE for 127.0.0.0/8 sources, with ``route_localnet`` on the
  bridge, so 127.0.0.1:PORT reaches the container and the answer finds its way back; and, where the
  forward names the address its media leaves from, the reverse of the DNAT: SNAT of what the container
  sends from the range (to anywhere but its own bridge) to that address, keeping the port. Without it the
  engine's MASQUERADE sends the relay's first packet to a peer from the host's address on the peer's
  link, and conntrack then moves the peer's own packets to the SDP's address and port to another port of
  the container (they clash with that first flow): one direction of the call is lost.
- filter ``DOCKER-XMS-FORWARD`` (jumped to from DOCKER-USER, else FORWARD): ACCEPT for the forwarded
  traffic, which Docker's FORWARD policy would otherwise drop.

Jumps are inserted once and left where they are: an administrator's own rules in DOCKER-USER may sit
above ours. Only a jump of Docker's own that has come to precede ours in a nat chain (an engine
restart puts it first) moves ours back in front of it, so that our DNAT still wins.

``route_localnet`` lets the kernel route packets addressed to 127.0.0.0/8 that arrive on the bridge
instead of dropping them as martians; alone it would let anything on that network reach the host's
loopback services (CVE-2020-8558). So while any forward exists, filter ``DOCKER-XMS-INPUT`` (jumped to
first from INPUT) drops packets to 127.0.0.0/8 that come from another interface and from a source
outside 127.0.0.0/8, unless they belong to a connection that began on the host itself or came through
a DNAT. The jump's comment keeps the value ``route_localnet`` had before docker-xms turned it on, and
the value goes back when the last forward goes.

Whenever a forward comes or goes, the conntrack entries of its ports go too (`adapters/conntrack.py`): an
entry that a previous holder of the range left (or a peer's stream that began before the rule) would
otherwise keep steering that flow past the new rules until it times out.

Rules for IPv4 only: the engine's default bridge has no IPv6.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import shlex
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from docker_xms.adapters.conntrack import Conntrack
from docker_xms.adapters.hostlock import host_lock
from docker_xms.domain.forwards import DnatForward, Forward, Reconciled
from docker_xms.errors import BadInput, XmsError

DEFAULT_LOCK = Path("/run/docker-xms/netfilter.lock")
DEFAULT_CHAIN = "DOCKER-XMS"
COMMENT_PREFIX = "docker-xms"

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ID = re.compile(r"^[0-9a-f]{12,64}$")
# The INPUT jump's comment: the bridge and the route_localnet value to restore when the last forward goes.
_LOCALNET = re.compile(rf"^{COMMENT_PREFIX}:route_localnet:([A-Za-z0-9_.-]+):([01])$")
# Docker's own jumps in the built-in chains docker-xms jumps from; ours must come before them.
_DOCKER_JUMPS = frozenset({"DOCKER", "DOCKER-USER", "DOCKER-FORWARD", "DOCKER-ISOLATION-STAGE-1"})
_OURS = re.compile(rf"^{COMMENT_PREFIX}:([0-9a-f]{{12}}):([A-Za-z0-9_.-]+)$")
# Longest chain name iptables accepts, minus the longest suffix used here.
_CHAIN_MAX = 28 - len("-POSTROUTING")


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
        conntrack: Conntrack | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", chain) or len(chain) > _CHAIN_MAX:
            raise BadInput(f"Chain name {chain!r} must be up to {_CHAIN_MAX} letters, digits, '-' or '_'.")
        self.lock_path = lock_path
        self.bridge = bridge
        self.iptables = iptables
        self.timeout = timeout
        self.conntrack = conntrack if conntrack is not None else Conntrack()
        self.nat_chain = chain
        self.post_chain = f"{chain}-POSTROUTING"
        self.filter_chain = f"{chain}-FORWARD"
        self.input_chain = f"{chain}-INPUT"

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
        return _forwards_of(self._owned("nat", self.nat_chain), self._owned("nat", self.post_chain))

    # Changing

    def ensure_chains(self) -> None:
        """Create the chains and jumps if missing; safe to call on every start and reconciliation."""
        with self._locked():
            self._ensure_chains()

    def reconcile(self, live: Mapping[str, Sequence[DnatForward]]) -> Reconciled:
        """Make the rules match `live` (container id to its forwards): others' rules go, missing ones come.

        A container's rules are rewritten when they differ in any way from what its forwards ask for (a
        forward moved, or the address its media leaves from changed); the conntrack entries of every
        forward that came or went are forgotten after the rules have changed.
        """
        wanted = {_short_id(cid): list(specs) for cid, specs in live.items()}
        planned = {cid: [rule for spec in specs for rule in self._rules(cid, spec)] for cid, specs in wanted.items()}
        removed: list[str] = []
        added: list[str] = []
        changed: set[DnatForward] = set()
        with self._locked():
            self._ensure_chains()
            owned = {(table, chain): self._owned(table, chain) for table, chain in self._chains()}
            have: dict[str, Counter[_Rule]] = {}
            for (table, chain), rules in owned.items():
                for (cid, _), args in rules:
                    have.setdefault(cid, Counter())[_Rule(table, chain, tuple(args))] += 1
            held: dict[str, set[DnatForward]] = {}
            for forward in _forwards_of(owned[("nat", self.nat_chain)], owned[("nat", self.post_chain)]):
                held.setdefault(forward.container_id, set()).add(_unplaced(forward.spec))
            for cid in sorted(set(have) - set(wanted)):
                self._remove_owner(cid)
                removed.append(cid)
                changed |= held.get(cid, set())
            if any(planned.values()):
                self._localnet_on()
            for cid, specs in wanted.items():
                if have.get(cid, Counter()) == Counter(planned[cid]):
                    continue
                if cid in have:
                    self._remove_owner(cid)
                self._add_all(planned[cid])
                added.append(cid)
                # Forwards that came or went (not those only leaving from another address now).
                changed |= held.get(cid, set()) ^ {_unplaced(f) for f in specs}
            if not any(planned.values()):
                self._localnet_off()
            if changed:
                self.conntrack.forget(sorted(changed, key=lambda f: (f.protocol, f.host_start)))
        return Reconciled(tuple(removed), tuple(added))

    # Inside

    def _chains(self) -> tuple[tuple[str, str], ...]:
        return (("nat", self.nat_chain), ("nat", self.post_chain), ("filter", self.filter_chain))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with host_lock(self.lock_path, self.timeout):
            yield

    def _run(self, table: str, args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        done = self._spawn(table, args)
        for _ in range(3):
            if done.returncode >= 0:
                break
            # Killed by a signal (one that reached it before it left our process group, in a storm of them):
            # done if its change is there, else tried again.
            if self._in_effect(table, args):
                return subprocess.CompletedProcess(done.args, 0, "", "")
            done = self._spawn(table, args)
        if check and done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            reason = message[-1] if message else f"exit status {done.returncode}"
            raise XmsError(f"iptables refused '{shlex.join(['-t', table, *args])}': {reason.rstrip('.')}.")
        return done

    def _spawn(self, table: str, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        command = [self.iptables, "-w", str(int(self.timeout)), "-t", table, *args]
        try:
            # A process group of its own: a signal to ours (Ctrl-C on the terminal, kill -TERM -PGID) is
            # for docker-xms to act on, and must not kill a rule change half-way, least of all a rollback's.
            return subprocess.run(
                command, capture_output=True, text=True, timeout=self.timeout + 5, check=False, process_group=0
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise XmsError(f"Could not run {shlex.join(command)}: {exc}.") from None

    def _in_effect(self, table: str, args: Sequence[str]) -> bool:
        """Whether a change that was cut short by a signal took effect all the same."""
        if not args:
            return False
        op, rest = args[0], list(args[1:])
        if op in ("-A", "-D") and rest:
            present = self._spawn(table, ["-C", *rest]).returncode == 0
            return present if op == "-A" else not present
        if op == "-I" and len(rest) >= 2 and rest[1].isdigit():
            return self._spawn(table, ["-C", rest[0], *rest[2:]]).returncode == 0
        if op == "-X" and rest:
            return self._spawn(table, ["-S", rest[0]]).returncode != 0
        if op == "-N" and rest:
            return self._spawn(table, ["-S", rest[0]]).returncode == 0
        return False

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
        # Chains without a guard were made by a docker-xms that turned route_localnet on whenever it
        # ran, guard or not: the value from before it is the kernel's default.
        legacy = self._exists("nat", self.nat_chain) and not any(
            bridge == self.bridge for _, bridge, _, _ in self._localnet_jumps()
        )
        for table, chain in self._chains():
            self._make_chain(table, chain)
        local = ["-m", "addrtype", "--dst-type", "LOCAL"]
        self._jump("nat", "PREROUTING", [*local, *_comment(self.nat_chain), "-j", self.nat_chain])
        self._jump("nat", "OUTPUT", [*local, *_comment(self.nat_chain), "-j", self.nat_chain])
        # Before the engine's MASQUERADE too (an engine restart inserts it first): it ends the traversal,
        # and our SNAT of a media range would never be reached.
        masquerade = _DOCKER_JUMPS | {"MASQUERADE"}
        self._jump("nat", "POSTROUTING", [*_comment(self.post_chain), "-j", self.post_chain], masquerade)
        forward = "DOCKER-USER" if self._exists("filter", "DOCKER-USER") else "FORWARD"
        self._jump("filter", forward, [*_comment(self.filter_chain), "-j", self.filter_chain])
        if self._owned("nat", self.nat_chain):
            # Forwards of an earlier run: the bridge may be new since (an engine restart), with the default.
            self._localnet_on(before="0" if legacy else None)
        elif legacy:
            path = self._localnet_path()
            if path.exists() and path.read_text().strip() == "1":
                self._write_localnet(path, "0")

    def _make_chain(self, table: str, chain: str) -> None:
        """Create the chain unless it exists; one that another process made a moment before counts as made
        (an iptables without the lock, or a chain set of another docker-xms, can race this one)."""
        if self._exists(table, chain):
            return
        done = self._run(table, ["-N", chain], check=False)
        if done.returncode != 0 and not self._exists(table, chain):
            self._run(table, ["-N", chain])

    def _jump(self, table: str, builtin: str, jump: list[str], docker_targets: frozenset[str] = _DOCKER_JUMPS) -> None:
        """Insert `jump` once; move it only when one of Docker's own jumps has come to precede it."""
        rules = self._rules_of(table, builtin)
        target = _target(jump)
        ours = [i for i, args in enumerate(rules) if _target(args) == target]
        for i in reversed(ours[1:]):
            self._run(table, ["-D", builtin, *rules[i]])
        docker = next((i for i, args in enumerate(rules) if _target(args) in docker_targets), None)
        if ours and (docker is None or ours[0] < docker):
            return
        if ours:
            self._run(table, ["-D", builtin, *rules[ours[0]]])
        # Right above Docker's jump, so that rules an administrator put above Docker's stay above ours.
        position = 1 if docker is None else docker + 1
        self._run(table, ["-I", builtin, str(position), *jump])

    def _localnet_jumps(self) -> list[tuple[str, str, str, list[str]]]:
        """Every docker-xms guard jump in INPUT: (chain, bridge, value to restore, rule)."""
        out = []
        for args in self._rules_of("filter", "INPUT"):
            match = _LOCALNET.match(_option(args, "--comment") or "")
            target = _target(args)
            if match is not None and target is not None:
                out.append((target, match.group(1), match.group(2), args))
        return out

    def _localnet_path(self) -> Path:
        return Path("/proc/sys/net/ipv4/conf") / self.bridge / "route_localnet"

    def _localnet_on(self, before: str | None = None) -> None:
        """The martian guard first, then route_localnet on the bridge, so the two never part."""
        path = self._localnet_path()
        try:
            now = path.read_text().strip()
        except FileNotFoundError:
            # No such bridge yet: only 127.0.0.1 would not be forwarded; outside traffic still is.
            return
        except OSError as exc:
            raise XmsError(f"Could not read {path}: {exc.strerror}.") from None
        jumps = [j for j in self._localnet_jumps() if j[1] == self.bridge]
        if not any(chain == self.input_chain for chain, *_ in jumps):
            # Another docker-xms chain set may have turned it on already: keep the value from before that.
            if before is None:
                before = jumps[0][2] if jumps else ("1" if now == "1" else "0")
            self._make_chain("filter", self.input_chain)
            self._run("filter", ["-F", self.input_chain])
            self._run("filter", ["-A", self.input_chain, *self._guard()])
            comment = _comment(f"{COMMENT_PREFIX}:route_localnet:{self.bridge}:{before}")
            self._run("filter", ["-I", "INPUT", "1", *comment, "-j", self.input_chain])
        elif self._rules_of("filter", self.input_chain) != [self._guard()]:
            self._run("filter", ["-F", self.input_chain])
            self._run("filter", ["-A", self.input_chain, *self._guard()])
        if now != "1":
            try:
                path.write_text("1\n")
            except OSError as exc:
                # In a container (the agent as a Swarm service: never privileged) /proc/sys is read-only.
                # As without the bridge above, only 127.0.0.1 is not forwarded; outside traffic still is.
                if exc.errno != errno.EROFS:
                    raise XmsError(f"Could not set {path} to 1: {exc.strerror}.") from None

    def _localnet_off(self) -> None:
        """route_localnet back to its value from before docker-xms, then the guard goes."""
        jumps = [j for j in self._localnet_jumps() if j[1] == self.bridge]
        mine = [j for j in jumps if j[0] == self.input_chain]
        if mine and len(mine) == len(jumps):
            path = self._localnet_path()
            try:
                if path.read_text().strip() != mine[0][2]:
                    self._write_localnet(path, mine[0][2])
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise XmsError(f"Could not read {path}: {exc.strerror}.") from None
        for _, _, _, args in mine:
            self._run("filter", ["-D", "INPUT", *args])
        if self._exists("filter", self.input_chain):
            self._run("filter", ["-F", self.input_chain])
            self._run("filter", ["-X", self.input_chain])

    def _write_localnet(self, path: Path, value: str) -> None:
        try:
            path.write_text(f"{value}\n")
        except OSError as exc:
            raise XmsError(f"Could not set {path} to {value}: {exc.strerror}.") from None

    @staticmethod
    def _guard() -> list[str]:
        # As `iptables -S` prints it back, so that a changed rule can be told from ours.
        return [
            "-d",
            "127.0.0.0/8",
            "!",
            "-i",
            "lo",
            "-m",
            "conntrack",
            "!",
            "--ctstate",
            "RELATED,ESTABLISHED,DNAT",
            "-m",
            "comment",
            "--comment",
            f"{COMMENT_PREFIX}: martian to 127.0.0.0/8 from outside",
            "-j",
            "DROP",
        ]

    def _rules(self, cid: str, spec: DnatForward) -> list[_Rule]:
        _check_spec(spec)
        comment = _comment(f"{COMMENT_PREFIX}:{cid}:{spec.name}")
        proto = ["-p", spec.protocol, "-m", spec.protocol]
        host = _span(spec.host_start, spec.host_end, ":")
        dest = _span(spec.container_start, spec.container_end, ":")
        to = f"{spec.container_ip}:{_span(spec.container_start, spec.container_end, '-')}"
        if spec.container_start != spec.container_end:
            to += f"/{spec.host_start}"
        ip = f"{spec.container_ip}/32"
        rules = [
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
        if spec.source_ip and spec.same_numbers:
            # The reverse of the DNAT. No port after the address: SNAT then keeps the source port, which is
            # the host's port too (see DnatForward.leaving_from for a shifted range).
            out_of = ("-s", ip, "!", "-o", self.bridge, *proto, "--sport", dest, *comment)
            rules.append(_Rule("nat", self.post_chain, (*out_of, "-j", "SNAT", "--to-source", spec.source_ip)))
        return rules

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


def _check_spec(spec: DnatForward) -> None:
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
    if spec.source_ip:
        try:
            ipaddress.IPv4Address(spec.source_ip)
        except ValueError:
            raise BadInput(f"The address {spec.source_ip!r} media of {where} leaves from is not IPv4.") from None
    for low, high in ((spec.host_start, spec.host_end), (spec.container_start, spec.container_end)):
        if not 1 <= low <= high <= 65535:
            raise BadInput(f"Ports {low}-{high} of {where} must lie within 1-65535, low to high.")
    if spec.host_end - spec.host_start != spec.container_end - spec.container_start:
        raise BadInput(f"The host and container ranges of {where} differ in size.")


def _forwards_of(
    nat: Sequence[tuple[tuple[str, str], list[str]]], post: Sequence[tuple[tuple[str, str], list[str]]]
) -> list[Forward]:
    """The forwards the owned DNAT rules hold, each with the address its SNAT rule (if any) sends media from."""
    sources: dict[tuple[str, str, str], str] = {}
    for (cid, name), args in post:
        source, sport = _option(args, "--to-source"), _option(args, "--sport")
        if _target(args) == "SNAT" and source is not None and sport is not None:
            sources[(cid, name, sport)] = source
    out: list[Forward] = []
    for (cid, name), args in nat:
        spec = _parse_dnat(name, args)
        if spec is not None:
            sport = _span(spec.container_start, spec.container_end, ":")
            out.append(Forward(cid, spec.leaving_from(sources.get((cid, name, sport), ""))))
    return out


def _unplaced(spec: DnatForward) -> DnatForward:
    """A forward as its DNAT rule holds it: which ports go where, without the address media leaves from."""
    return replace(spec, source_ip="")


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


def _parse_dnat(name: str, args: Sequence[str]) -> DnatForward | None:
    """A forward from a DNAT rule as `iptables -S` prints it; None for a rule of another shape."""
    protocol, dport, to = _option(args, "-p"), _option(args, "--dport"), _option(args, "--to-destination")
    if _target(args) != "DNAT" or protocol is None or dport is None or to is None:
        return None
    match = re.fullmatch(r"([0-9.]+):(\d+)(?:-(\d+))?(?:/(\d+))?", to)
    if match is None:
        return None
    low, _, high = dport.partition(":")
    dest_start = int(match.group(2))
    return DnatForward(
        name, protocol, int(low), int(high or low), dest_start, int(match.group(3) or dest_start), match.group(1)
    )
