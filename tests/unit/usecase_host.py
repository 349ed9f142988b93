"""A host made of the in-memory fakes, for use-case tests: cgroups, engine, netfilter and an RtHost, and
the host object a command hands its use cases, built from them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from docker_xms.adapters.cgroups import HostRt
from docker_xms.domain.boot import userns_remapped
from docker_xms.domain.cpusets import CpuLayout
from docker_xms.domain.engine_types import DOCKER, PODMAN
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
from tests.fakes import REFUSALS, FakeCgroupFs, FakeContainer, FakeEngine, FakeNetfilter

if TYPE_CHECKING:
    from docker_xms.domain.engine_types import EngineInfo, EngineKind

IMAGE = "test/rtpengine:1"
NO_SYSTEMD = "test/plain:1"
PARENT = "/docker"
# Where the systemd driver puts containers (each engine's default parent).
V2_PARENTS = {DOCKER: "/system.slice", PODMAN: "/machine.slice"}


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


def make_host(
    tmp: Path,
    cgroup_version: int = 1,
    userns: bool = False,
    engine_kind: EngineKind = DOCKER,
    rt_runtime_us: int = 950_000,
) -> Host:
    """A v1 host with per-group budgets (the cgroupfs driver), or a v2 host of a stock kernel as the lab's are:
    no group budgets, SCHED_FIFO global, the systemd driver; `userns`: the engine remaps users; `engine_kind`:
    Docker or Podman answers (Podman has no writable-cgroups); `rt_runtime_us`: the kernel's global limit
    (950000 until Linux 6.x; 7.x sets it to the whole period, the fair server being the guard)."""
    v2 = cgroup_version == 2
    # As the lab's v2 hosts are: the systemd driver, 2 CPUs, so CPU-set mode with housekeeping CPU 0.
    driver, parent = ("systemd", V2_PARENTS[engine_kind]) if v2 else ("cgroupfs", PARENT)
    fs = FakeCgroupFs(root_runtime=950_000)
    fs.ensure(parent)
    engine = FakeEngine(fs, parent, images={IMAGE: ["/lib/systemd/systemd"], NO_SYSTEMD: ["/bin/sh"]}, driver=driver)
    engine.engine_info = dataclasses.replace(
        engine.engine_info,
        kind=engine_kind,
        cgroup_version=str(cgroup_version),
        cgroup_driver=driver,
        security_options=engine.engine_info.security_options + (("name=userns",) if userns else ()),
    )
    if engine_kind == PODMAN:
        engine.writable_cgroups = False
        engine.refusal = REFUSALS[PODMAN]
    host = (
        HostRt(2, False, rt_runtime_us, 1_000_000, "global", tmp / "cpu")
        if v2
        else HostRt(1, True, 950_000, 1_000_000, "per-group", tmp / "cpu")
    )
    settings = Settings(lock_path=tmp / "host.lock", state_dir=tmp / "state")
    # No host service listens on a media port of this host.
    rt = RtHost(
        engine=engine,
        host=host,
        fs=fs,
        driver=driver,
        parent=parent,
        settings=settings,
        listening=lambda: {"tcp": set(), "udp": set()},
        userns=userns,
        engine_kind=engine_kind,
        cpus=CpuLayout((0,), (1,)) if v2 else None,
    )
    return Host(fs, engine, FakeNetfilter(), rt)


def host_facts(rt: RtHost, info: EngineInfo) -> dict[str, object]:
    """What decides docker-xms's behaviour on a host, from its host object and its engine's account: a fake host
    (facts_of) and a lab machine's real one (tests/lab/steps.host_facts) are compared by this."""
    return {
        "cgroup_version": rt.host.cgroup_version,
        "rt_group_sched": rt.host.rt_group_sched,
        "rt_mode": rt.host.mode,
        "rt_runtime_us": rt.host.rt_runtime_us,
        "rt_period_us": rt.host.rt_period_us,
        "driver": rt.driver,
        "parent": rt.parent,
        "cpus": None if rt.cpus is None else [list(rt.cpus.housekeeping), list(rt.cpus.media)],
        "userns": rt.userns,
        "engine_kind": rt.engine_kind,
        "engine_cgroup_version": info.cgroup_version,
        "engine_driver": info.cgroup_driver,
        "engine_userns": userns_remapped(info.security_options),
        "engine_reports_kind": info.kind,
    }


def facts_of(host: Host) -> dict[str, object]:
    """What this fake host claims about the host it models (host_facts)."""
    return host_facts(host.rt, host.engine.info())
