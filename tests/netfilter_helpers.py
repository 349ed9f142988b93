"""Netfilter calls only the tests make: one container's rules added or removed on their own, and every
rule and chain removed. The product reconciles all containers at once (`Netfilter.reconcile`).
"""

from __future__ import annotations

from collections.abc import Sequence

from docker_xms.adapters.netfilter import Netfilter, _short_id, _target
from docker_xms.domain.forwards import DnatForward


class ScratchNetfilter(Netfilter):
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
        spec = DnatForward(name, protocol, host_start, host_end, dest_start, dest_end, container_ip)
        self.add_container(container_id, [spec])

    def add_container(self, container_id: str, specs: Sequence[DnatForward]) -> None:
        """Add all of a container's forwards, or none: a failure removes the rules added before it."""
        cid = _short_id(container_id)
        rules = [rule for spec in specs for rule in self._rules(cid, spec)]
        with self._locked():
            if rules:
                self._localnet_on()
            self._add_all(rules)

    def remove_container(self, container_id: str) -> int:
        """Remove every rule of the container; returns how many there were."""
        cid = _short_id(container_id)
        with self._locked():
            count = self._remove_owner(cid)
            if not self._owned("nat", self.nat_chain):
                self._localnet_off()
            return count

    def remove_all(self) -> None:
        """Remove the jumps and the chains with all their rules."""
        with self._locked():
            self._localnet_off()
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
