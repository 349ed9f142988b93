"""A host made of the in-memory fakes, for use-case tests: cgroups, engine, netfilter and an RtHost, and
the host object a command hands its use cases, built from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from docker_xms.adapters.cgroups import HostRt
from docker_xms.domain.labels import (
    ADVERTISE_LABEL,
    LABEL_DNAT,
    LABEL_HOST_MEDIA,
    LABEL_STRATEGY,
    MANAGED_LABEL,
    MODE_LABEL,
    PROFILE_LABEL,
    WEIGHT_LABEL,
)
from docker_xms.settings import Settings
from docker_xms.usecases import adoption
from docker_xms.usecases.host import Host as CommandHost
from docker_xms.usecases.reconcile import reconcile
from docker_xms.usecases.rt import RtHost
from tests.fakes import FakeCgroupFs, FakeContainer, FakeEngine, FakeNetfilter

IMAGE = "test/rtpengine:1"
NO_SYSTEMD = "test/plain:1"
PARENT = "/docker"


@dataclass
class Host:
    fs: FakeCgroupFs
    engine: FakeEngine
    netfilter: FakeNetfilter
    rt: RtHost

    @property
    def given(self) -> CommandHost:
        """What a command hands its use cases, made of these fakes."""
        return CommandHost(self.rt, self.netfilter)

    def runtime(self, container: FakeContainer | str) -> int:
        cid = container if isinstance(container, str) else container.id
        return self.fs.read_runtime(self.engine.cgroup_of(cid))

    def managed(
        self,
        name: str,
        weight: str = "1",
        dnat: str | None = None,
        running: bool = True,
        runtime: int = 0,
        advertise: str = "container",
        host_media: str | None = None,
        recorded: bool = True,
    ) -> FakeContainer:
        # As `run` labels its containers: with a port plan and an advertised address (not adopted), and
        # keeps what it decided in its record; without the record, the same labels are only a claim.
        labels = {
            MANAGED_LABEL: "true",
            PROFILE_LABEL: "rtpengine",
            MODE_LABEL: "container-address",
            WEIGHT_LABEL: weight,
            LABEL_STRATEGY: "dnat" if dnat is not None else "publish",
            ADVERTISE_LABEL: advertise,
        }
        if dnat is not None:
            labels[LABEL_DNAT] = dnat
        if host_media is not None:
            labels[LABEL_HOST_MEDIA] = host_media
        container = self.engine.add(name, labels, running=running, cpu_rt_runtime=runtime)
        if recorded:
            adoption.record(self.rt.settings, container.id, labels)
        return container

    def settle(self) -> None:
        """What every docker-xms command ends with: budgets and rules made to match what runs."""
        reconcile(self.rt, self.netfilter)


def make_host(tmp: Path, cgroup_version: int = 1, userns: bool = False) -> Host:
    """A v1 host with per-group budgets, or a v2 host of a stock kernel: no group budgets, SCHED_FIFO global."""
    fs = FakeCgroupFs(root_runtime=950_000)
    fs.ensure(PARENT)
    engine = FakeEngine(fs, PARENT, images={IMAGE: ["/lib/systemd/systemd"], NO_SYSTEMD: ["/bin/sh"]})
    host = (
        HostRt(1, True, 950_000, 1_000_000, "per-group", tmp / "cpu")
        if cgroup_version == 1
        else HostRt(2, False, 950_000, 1_000_000, "global", tmp / "cpu")
    )
    settings = Settings(lock_path=tmp / "host.lock", state_dir=tmp / "state")
    # No host service listens on a media port of this host.
    rt = RtHost(
        engine=engine,
        host=host,
        fs=fs,
        driver="cgroupfs",
        parent=PARENT,
        settings=settings,
        listening=lambda: {"tcp": set(), "udp": set()},
        userns=userns,
    )
    return Host(fs, engine, FakeNetfilter(), rt)
