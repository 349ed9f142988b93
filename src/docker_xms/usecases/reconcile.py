"""The one reconciliation routine: budgets and port rules made to match the containers that run.

Commands call it after every change and the agent calls it on every engine event, so that whatever
happened on the host (a crash, a `docker rm -f` by hand, an engine restart) the end state is right.
"""

from __future__ import annotations

from dataclasses import dataclass

from docker_xms.adapters.engine import Engine
from docker_xms.adapters.hostlock import host_lock
from docker_xms.adapters.netfilter import ForwardSpec, Netfilter, Reconciled
from docker_xms.domain import ports as port_plans
from docker_xms.domain.labels import MANAGED_LABEL
from docker_xms.usecases.rt import Rebalance, RtHost, rebalance_locked


@dataclass(frozen=True)
class Reconciliation:
    budgets: Rebalance
    rules: Reconciled | None


def live_forwards(engine: Engine) -> dict[str, list[ForwardSpec]]:
    """The DNAT forwards every running managed container should have, from its labels and address."""
    live: dict[str, list[ForwardSpec]] = {}
    for info in engine.list_containers(all=False, label=f"{MANAGED_LABEL}=true"):
        forwards = port_plans.forwards_from_labels(info.labels)
        if info.running and forwards and info.ip_address:
            live[info.id] = [
                ForwardSpec(
                    f.name, info.ip_address, f.protocol, f.host_start, f.host_end, f.container_start, f.container_end
                )
                for f in forwards
            ]
    return live


def reconcile(rt: RtHost, netfilter: Netfilter | None = None) -> Reconciliation:
    # One lock around reading the engine and writing rules: `run` adds a new container's rules under
    # it too, so a reconcile can neither miss them with a stale view nor add them a second time.
    netfilter = netfilter or Netfilter()
    with host_lock():
        budgets = rebalance_locked(rt)
        rules = None
        if netfilter.available():
            netfilter.ensure_chains()
            rules = netfilter.reconcile(live_forwards(rt.engine))
    return Reconciliation(budgets, rules)
