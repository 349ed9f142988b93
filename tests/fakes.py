"""In-memory stand-ins for the engine, the cpu cgroup files and netfilter, for fast use-case tests.

They obey the rules of the real things where the use cases depend on them: `FakeCgroupFs` refuses what
the kernel refuses on cpu.rt_runtime_us (tests/integration/test_fakes_match.py runs the same writes on
this machine's cgroups and on the fake and compares the outcomes); `FakeEngine` starts a container
into its cgroup with the budget stored in its configuration, as dockerd does, and fails the start when
the kernel refuses that budget, with the error the engine adapter raises then (`StartBudgetRefused`); `FakeNetfilter` keeps one set of forwards per container.

Faults are injected per call: `engine.fail["start"] = XmsError(...)` makes the next start raise it,
and `engine.before["update_rt_runtime"] = fn` runs `fn(*args)` first (a container vanishing between a
scan and a write).
"""

from __future__ import annotations

import errno
import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker_xms.adapters.cgroups import CgroupFs, CgroupWriteError, container_cgroup
from docker_xms.domain.boot import WRITABLE_CGROUPS
from docker_xms.domain.budget import PERIOD_US
from docker_xms.domain.cgroup_types import GroupRuntime
from docker_xms.domain.engine_types import ContainerInfo, ContainerSummary, CreateSpec, EngineInfo, PublishedPort
from docker_xms.domain.forwards import DnatForward, Forward, Reconciled
from docker_xms.errors import BadInput, CgroupsNotWritable, NotFound, StartBudgetRefused, XmsError

# The kernel compares bandwidths as runtime/period in this fixed point (kernel/sched/core.c, to_ratio).
BW_SHIFT = 20
RUNTIME_INF = -1


def to_ratio(period: int, runtime: int) -> int:
    if runtime == RUNTIME_INF:
        return 1 << BW_SHIFT
    return (runtime << BW_SHIFT) // period if period else 0


# --- cgroups --------------------------------------------------------------------------------------


@dataclass
class _Group:
    runtime: int = 0
    period: int = PERIOD_US
    # Real-time threads attached to this very group (not its children).
    rt_threads: int = 0


class FakeCgroupFs:
    """The cpu controller of cgroup v1 with CONFIG_RT_GROUP_SCHED, in memory.

    A write of cpu.rt_runtime_us is refused as the kernel refuses it (sched_group_set_rt_runtime and
    __rt_schedulable): EINVAL above the period, EINVAL when any group would then hold less than its
    children together or more than the global limit, EBUSY for 0 on a group running real-time threads.
    A new group starts at 0, as the kernel makes it. A removed group still counts in its parent's sum
    for the next `linger` writes, as the kernel counts it until it frees the group (after an RCU grace
    period), though its directory is gone at once.
    """

    def __init__(self, root_runtime: int = 950_000, root_period: int = PERIOD_US, linger: int = 0) -> None:
        self.groups: dict[str, _Group] = {"/": _Group(root_runtime, root_period)}
        self.writes: list[tuple[str, int]] = []
        self.linger = linger
        # Removed groups the kernel still counts: key -> (group, writes left before it is freed).
        self.dying: dict[str, tuple[_Group, int]] = {}

    @staticmethod
    def _key(rel: str) -> str:
        parts = [p for p in rel.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise BadInput(f"{rel!r} is not a cgroup path: it must not contain '.' or '..'.")
        return "/" + "/".join(parts)

    def _group(self, rel: str) -> _Group:
        group = self.groups.get(self._key(rel))
        if group is None:
            raise XmsError(f"Cannot read a number from {self.path(rel)}: no such cgroup.")
        return group

    def _children_of(self, key: str) -> list[str]:
        prefix = key.rstrip("/") + "/"
        return sorted(k for k in self.groups if k.startswith(prefix) and "/" not in k[len(prefix) :] and k != "/")

    def path(self, rel: str) -> Path:
        # Nowhere on disk: callers that look for files under it find none.
        return Path("/nonexistent-fake-cgroup") / self._key(rel).lstrip("/")

    def exists(self, rel: str) -> bool:
        return self._key(rel) in self.groups

    def procs_under(self, rel: str) -> set[int]:
        # No process runs in a fake group: callers fall back to the engine's list, as for a group that is gone.
        return set()

    def ensure(self, rel: str) -> None:
        key = self._key(rel)
        parts = [p for p in key.split("/") if p]
        for i in range(1, len(parts) + 1):
            self.groups.setdefault("/" + "/".join(parts[:i]), _Group())

    def mkdir(self, rel: str) -> None:
        key = self._key(rel)
        if key in self.groups:
            raise XmsError(f"The cgroup {key} exists.")
        if key.rsplit("/", 1)[0] or "/" not in self.groups:
            self.ensure(key.rsplit("/", 1)[0] or "/")
        self.groups[key] = _Group()

    def rmdir(self, rel: str) -> None:
        """Remove a group; like rmdir(2), refused while it has child groups or threads."""
        key = self._key(rel)
        group = self._group(key)
        if self._children_of(key) or group.rt_threads:
            raise CgroupWriteError(self.path(key), 0, OSError(errno.EBUSY, "Device or resource busy"))
        del self.groups[key]
        if self.linger:
            self.dying[key] = (group, self.linger)

    def read_runtime(self, rel: str) -> int:
        return self._group(rel).runtime

    def read_period(self, rel: str) -> int:
        return self._group(rel).period

    def write_runtime(self, rel: str, us: int) -> None:
        key = self._key(rel)
        target = self.path(key) / "cpu.rt_runtime_us"
        group = self.groups.get(key)
        if group is None:
            raise CgroupWriteError(target, us, OSError(errno.ENOENT, "No such file or directory"))
        refusal = self._refusal(key, group, us)
        self.dying = {k: (g, left - 1) for k, (g, left) in self.dying.items() if left > 1}
        if refusal:
            raise CgroupWriteError(target, us, OSError(refusal, errno.errorcode[refusal]))
        group.runtime = us
        self.writes.append((key, us))

    def _refusal(self, key: str, group: _Group, us: int) -> int:
        if us < RUNTIME_INF or us > group.period:
            return errno.EINVAL
        if us == 0 and group.rt_threads:
            return errno.EBUSY
        old, group.runtime = group.runtime, us
        try:
            return 0 if self._schedulable() else errno.EINVAL
        finally:
            group.runtime = old

    def _schedulable(self) -> bool:
        root = self.groups["/"]
        limit = to_ratio(root.period, root.runtime)
        for key, group in self.groups.items():
            total = to_ratio(group.period, group.runtime)
            if key != "/" and total > limit:
                return False
            children = sum(to_ratio(self.groups[c].period, self.groups[c].runtime) for c in self._children_of(key))
            children += sum(
                to_ratio(g.period, g.runtime) for k, (g, _) in self.dying.items() if (k.rsplit("/", 1)[0] or "/") == key
            )
            if children > total:
                return False
        return True

    def attach_rt_thread(self, rel: str) -> None:
        """A SCHED_FIFO thread moved into the group: the kernel refuses it where the group holds 0."""
        key = self._key(rel)
        group = self._group(key)
        if group.runtime == 0:
            raise CgroupWriteError(self.path(key) / "tasks", 0, OSError(errno.EINVAL, "Invalid argument"))
        group.rt_threads += 1

    def detach_rt_threads(self, rel: str) -> None:
        self._group(rel).rt_threads = 0

    def children(self, rel: str) -> list[GroupRuntime]:
        key = self._key(rel)
        self._group(key)
        return [
            GroupRuntime(c.rsplit("/", 1)[-1], self.groups[c].runtime, self.groups[c].period)
            for c in self._children_of(key)
        ]

    def sibling_runtime(self, rel: str) -> int:
        # The real adapter's rule, over this fake's children.
        return CgroupFs.sibling_runtime(self, rel)  # type: ignore[arg-type]


# --- the engine -----------------------------------------------------------------------------------


def booted(cmd: list[str]) -> tuple[int, str]:
    """What a container whose systemd has booted and whose media server is ready answers."""
    if cmd[:2] == ["systemctl", "is-system-running"]:
        return 0, "running\n"
    if cmd[:2] == ["systemctl", "is-active"]:
        return 0, "active\n" * len(cmd[2:])
    if cmd[0] == "/bin/bash":
        # Every profile's own check answers as its server does when it is up.
        return 0, "d6:result4:ponge\nSIP/2.0 200 OK\n"
    return 0, ""


# A pid above the kernel's largest (pid_max is at most 2^22): nothing under this machine's /proc answers to
# it, so code that looks a fake container's process up on the host (its mount namespace) finds none.
FAKE_PID = 99_999_999
# When every running fake container last started, as the engine writes it (1796666400.5 s after the epoch).
FAKE_STARTED_AT = "2026-12-07T18:00:00.500000000Z"


@dataclass
class FakeContainer:
    id: str
    name: str
    image: str
    labels: dict[str, str]
    spec: CreateSpec | None = None
    status: str = "created"
    ip_address: str = ""
    cpu_rt_runtime: int = 0
    cpuset_cpus: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    restart_policy: str = ""
    error: str = ""
    env: tuple[str, ...] = ()
    # When the engine last started it, as the engine writes it (None: FAKE_STARTED_AT).
    started_at: str | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"


# How engines without writable-cgroups refuse it at create, in their own words (the lab hosts' engines are
# checked against these: tests/lab).
REFUSALS = {
    "docker": f'invalid --security-opt 2: "{WRITABLE_CGROUPS}"',
    "podman": f'fill out specgen: invalid --security-opt 2: "{WRITABLE_CGROUPS}"',
}


class FakeEngine:
    """Containers with labels, state, address and stored budget; a container runs in its cgroup.

    `images` maps an image to the files it holds (a systemd image holds /lib/systemd/systemd).
    `answer` gives (exit code, output) for a command run in a container: by default that of a booted
    systemd whose units are active and whose server answers its readiness check.
    """

    def __init__(
        self,
        fs: FakeCgroupFs | None = None,
        parent: str = "/docker",
        images: Mapping[str, Sequence[str]] | None = None,
        driver: str = "cgroupfs",
    ) -> None:
        self.fs = fs
        self.parent = parent
        self.driver = driver
        self.images: dict[str, set[str]] = {k: set(v) for k, v in (images or {}).items()}
        self.containers: dict[str, FakeContainer] = {}
        self.answer: Callable[[list[str]], tuple[int, str]] = booted
        self.fail: dict[str, BaseException] = {}
        self.before: dict[str, Callable[..., None]] = {}
        self.calls: list[str] = []
        # What /info and /version say (make_host sets them for the host it models).
        self.engine_info = EngineInfo(
            server_version="20.10.0",
            api_version="1.41",
            cgroup_driver="cgroupfs",
            cgroup_version="1",
            security_options=("name=seccomp,profile=default",),
            docker_root="/var/lib/docker",
        )
        # Engine 28 and later make a container's own cgroup writable when asked; Docker 26 (Debian 13's) and
        # Podman's Docker API refuse the option at create, in these words (REFUSALS).
        self.writable_cgroups = True
        self.refusal = REFUSALS["docker"]
        self._ids = itertools.count(1)
        self._addresses = itertools.count(2)

    def _new_id(self) -> str:
        # Distinct in their first 12 characters, as the short ids netfilter's comments carry.
        return hashlib.sha256(str(next(self._ids)).encode()).hexdigest()

    # Faults and hooks, then the call.
    def _enter(self, method: str, *args: Any) -> None:
        self.calls.append(method)
        hook = self.before.pop(method, None)
        if hook is not None:
            hook(*args)
        fault = self.fail.pop(method, None)
        if fault is not None:
            raise fault

    def _find(self, ref: str) -> FakeContainer | None:
        if ref in self.containers:
            return self.containers[ref]
        by_name = [c for c in self.containers.values() if c.name == ref]
        if by_name:
            return by_name[0]
        by_prefix = [c for c in self.containers.values() if ref and c.id.startswith(ref)]
        return by_prefix[0] if len(by_prefix) == 1 else None

    def _get(self, ref: str) -> FakeContainer:
        found = self._find(ref)
        if found is None:
            raise NotFound(f"There is no container {ref}.")
        return found

    def cgroup_of(self, container_id: str) -> str:
        return container_cgroup(self.parent, self.driver, container_id, self.engine_info.kind)

    # A container made outside the use cases (by hand, by another process).
    def add(
        self,
        name: str,
        labels: Mapping[str, str],
        running: bool = True,
        cpu_rt_runtime: int = 0,
        image: str = "test/image:1",
    ) -> FakeContainer:
        cid = self._new_id()
        container = FakeContainer(cid, name, image, dict(labels), cpu_rt_runtime=cpu_rt_runtime)
        self.containers[cid] = container
        if running:
            self._run(container)
        return container

    def vanish(self, ref: str) -> None:
        """`docker rm -f` by someone else: the container and its cgroup are gone."""
        container = self._get(ref)
        self._halt(container)
        del self.containers[container.id]

    def _run(self, container: FakeContainer) -> None:
        if self.fs is not None:
            group = self.cgroup_of(container.id)
            self.fs.ensure(self.parent)
            self.fs.mkdir(group)
            if container.cpu_rt_runtime > 0:
                try:
                    self.fs.write_runtime(group, container.cpu_rt_runtime)
                except CgroupWriteError as exc:
                    self.fs.rmdir(group)
                    container.error = "failed to write cpu.rt_runtime_us: invalid argument"
                    raise StartBudgetRefused(f"The engine could not start the container: {exc.message}") from exc
                # Its server's threads run SCHED_FIFO as soon as it starts.
                self.fs.attach_rt_thread(group)
        container.status = "running"
        container.error = ""
        container.ip_address = f"172.17.0.{next(self._addresses)}"

    def _halt(self, container: FakeContainer) -> None:
        if container.running and self.fs is not None:
            group = self.cgroup_of(container.id)
            if self.fs.exists(group):
                self.fs.detach_rt_threads(group)
                self.fs.rmdir(group)
        container.status = "exited"
        container.ip_address = ""

    # --- what the use cases call ---

    def info(self) -> EngineInfo:
        self._enter("info")
        return self.engine_info

    def image_exists(self, ref: str) -> bool:
        self._enter("image_exists", ref)
        return ref in self.images

    def image_command(self, ref: str) -> tuple[str, ...]:
        self._enter("image_command", ref)
        return ("/sbin/init",)

    def pull(self, repository: str, tag: str, progress: Any = None) -> None:
        self._enter("pull", repository, tag)
        raise NotFound(f"There is no image {repository}:{tag} in its registry.")

    def create_container(self, spec: CreateSpec) -> str:
        self._enter("create_container", spec)
        if spec.image not in self.images:
            raise NotFound(f"There is no image {spec.image} on this engine.")
        if spec.name and self._find(spec.name) is not None:
            raise BadInput(f"A container with that name already exists (Conflict: {spec.name}).")
        if WRITABLE_CGROUPS in spec.security_opt and not self.writable_cgroups:
            raise CgroupsNotWritable(f"The engine could not create the container: {self.refusal}.")
        cid = self._new_id()
        files = dict.fromkeys(self.images[spec.image], b"")
        name = spec.name or f"fake_{cid[:6]}"
        self.containers[cid] = FakeContainer(
            cid,
            name,
            spec.image,
            dict(spec.labels),
            spec,
            cpu_rt_runtime=spec.cpu_rt_runtime,
            cpuset_cpus=spec.cpuset_cpus,
            files=files,
        )
        return cid

    def start(self, container_id: str) -> None:
        self._enter("start", container_id)
        container = self._get(container_id)
        if not container.running:
            self._run(container)

    def stop(self, container_id: str, timeout: int | None = 10) -> None:
        self._enter("stop", container_id)
        self._halt(self._get(container_id))

    def remove(self, container_id: str, force: bool = True) -> None:
        self._enter("remove", container_id)
        container = self._find(container_id)
        if container is None:
            return
        if container.running and not force:
            raise XmsError(f"The engine could not remove {container_id[:12]}: it is running.")
        self.vanish(container.id)

    def put_file(self, container_id: str, path: str, content: bytes, mode: int = 0o644) -> None:
        self._enter("put_file", container_id, path)
        self._get(container_id).files[path] = content

    def put_files(self, container_id: str, files: Sequence[tuple[str, bytes, int]]) -> None:
        self._enter("put_files", container_id, files[0][0] if files else "")
        container = self._get(container_id)
        for path, content, _ in files:
            container.files[path] = content

    def path_exists(self, container_id: str, path: str) -> bool:
        self._enter("path_exists", container_id, path)
        return path in self._get(container_id).files

    def get_container(self, ref: str) -> ContainerInfo:
        self._enter("get_container", ref)
        return self._info(self._get(ref))

    def find_container(self, ref: str) -> ContainerInfo | None:
        self._enter("find_container", ref)
        found = self._find(ref)
        return None if found is None else self._info(found)

    def list_containers(self, all: bool = True, label: str | None = None) -> list[ContainerSummary]:
        self._enter("list_containers")
        key, _, value = (label or "").partition("=")
        return [
            self._summary(c)
            for c in self.containers.values()
            if (all or c.running) and (not key or (key in c.labels and (not value or c.labels[key] == value)))
        ]

    def update_rt_runtime(self, container_id: str, runtime_us: int) -> None:
        self._enter("update_rt_runtime", container_id, runtime_us)
        # Stored only: engines before 23 do not apply an update to the running cgroup.
        self._get(container_id).cpu_rt_runtime = runtime_us

    def update_cpuset(self, container_id: str, cpus: str) -> None:
        self._enter("update_cpuset", container_id, cpus)
        self._get(container_id).cpuset_cpus = cpus

    def container_pids(self, container_id: str) -> list[int]:
        self._enter("container_pids", container_id)
        return []

    def exec(
        self,
        container_id: str,
        cmd: list[str],
        user: str = "",
        environment: dict[str, str] | None = None,
        timeout_s: float = 30.0,
        max_bytes: int = 4 << 20,
    ) -> tuple[int, str]:
        self._enter("exec", container_id, cmd)
        container = self._get(container_id)
        if not container.running:
            raise XmsError(f"Running {cmd[0]} in {container_id[:12]} failed: container is not running.")
        return self.answer(cmd)

    def _info(self, c: FakeContainer) -> ContainerInfo:
        spec = c.spec or CreateSpec(c.image)
        ports = {
            key: [{"HostIp": "0.0.0.0", "HostPort": str(value if isinstance(value, int) else 40000)}]
            for key, value in (spec.ports or {}).items()
        }
        return ContainerInfo(
            id=c.id,
            name=c.name,
            status=c.status,
            pid=FAKE_PID if c.running else 0,
            image=c.image,
            labels=dict(c.labels),
            ip_address=c.ip_address,
            cpu_rt_runtime=c.cpu_rt_runtime,
            cpuset_cpus=c.cpuset_cpus,
            cpu_rt_period=0,
            cgroup_parent="",
            ports=ports if c.running else {},
            restart_policy=c.restart_policy,
            network_mode=spec.network_mode or "default",
            error=c.error,
            env=c.env,
            rttime_us=spec.rttime_us[0] if spec.rttime_us else 0,
            started_at=(c.started_at or FAKE_STARTED_AT) if c.running else "",
        )

    def _summary(self, c: FakeContainer) -> ContainerSummary:
        ports = tuple(
            PublishedPort(key.split("/")[1], int(key.split("/")[0]), value if isinstance(value, int) else 0)
            for key, value in ((c.spec.ports or {}).items() if c.spec else ())
        )
        return ContainerSummary(
            id=c.id,
            name=c.name,
            image=c.image,
            state=c.status,
            status="Up" if c.running else "Exited (0)",
            labels=dict(c.labels),
            ip_address=c.ip_address,
            ports=ports if c.running else (),
            # The order containers were made in, as the engine's creation times give it.
            created=list(self.containers).index(c.id),
        )


# --- netfilter ------------------------------------------------------------------------------------


@dataclass
class FakeNetfilter:
    """The DNAT forwards per container (by 12-character id), as `Netfilter` keeps them in its chains."""

    is_available: bool = True
    chains: bool = False
    forwards: dict[str, list[DnatForward]] = field(default_factory=dict)
    fail: dict[str, BaseException] = field(default_factory=dict)

    def available(self) -> bool:
        return self.is_available

    def ensure_chains(self) -> None:
        fault = self.fail.pop("ensure_chains", None)
        if fault is not None:
            raise fault
        self.chains = True

    def list_forwards(self) -> list[Forward]:
        return [Forward(cid, spec) for cid, specs in self.forwards.items() for spec in specs]

    def reconcile(self, live: Mapping[str, Sequence[DnatForward]]) -> Reconciled:
        fault = self.fail.pop("reconcile", None)
        if fault is not None:
            raise fault
        wanted = {cid[:12]: list(specs) for cid, specs in live.items()}
        removed = tuple(sorted(cid for cid in self.forwards if cid not in wanted))
        added = tuple(cid for cid, specs in wanted.items() if set(specs) != set(self.forwards.get(cid, [])) and specs)
        self.chains = True
        self.forwards = {cid: specs for cid, specs in wanted.items() if specs}
        return Reconciled(removed, added)
