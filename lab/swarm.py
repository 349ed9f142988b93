"""A swarm on this machine for the fleet tests and the swarm-ports benchmark: Docker engines in containers,
joined into one swarm.

Each node is a container running `dockerd` from an offline Debian root file system (mmdebstrap), started
without --privileged: SYS_ADMIN, NET_ADMIN and SYS_NICE, no seccomp filter, tmpfs /run, a volume for /var/lib/docker, and the
host's cgroup tree mounted writable so the node's engine can make its tasks' cgroups. Each engine has its
own cgroup parent (/lab-<node>), a sibling of the host's /docker: the kernel's real-time limit is shared
by all of them, so each node parent gets a fixed cap (its pool) and /docker gives up that much while the
lab runs. Each node advertises its pool as the Swarm generic resource RT_MS. Images reach the nodes from a
local docker-registry (filled by `docker-xms push` through 127.0.0.1, read by the nodes through a relay
on the lab network's gateway, since the host's engine trusts only 127.0.0.0/8 without TLS).

The engines listen on a socket in a host directory too, so the host's docker CLI and SDK (and docker-xms,
through DOCKER_HOST) speak to each node's engine directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker

from docker_xms.adapters import rootfs
from docker_xms.domain.recipes import LABEL_RECIPE, recipe_hash
from lab.helpers import TEST_LABEL, run_cli, wait_for

NODE_IMAGE = "docker-xms-test/swarm-node:latest"
NODE_PACKAGES = ("docker.io", "iptables", "iproute2", "procps", "util-linux")
LAB_LABEL = "io.docker-xms.test.swarm-lab"
CGROUP_ROOT = Path("/sys/fs/cgroup")
HOST_PARENT = "docker"
# Each node's real-time pool, per 1 s period: three nodes take 270 ms of the kernel's 950 ms.
NODE_POOL_US = 90_000
LAB_RUN = Path("/var/tmp/docker-xms-lab")


def node_recipe() -> dict[str, object]:
    return {"packages": NODE_PACKAGES, "cmd": "dockerd", "suite": "bookworm", "v": 1}


def ensure_node_image(client: Any) -> str:
    """The node image, built offline once and reused while its recipe is the same."""
    want = recipe_hash(node_recipe())
    with contextlib.suppress(docker.errors.ImageNotFound):
        if (client.images.get(NODE_IMAGE).labels or {}).get(LABEL_RECIPE) == want:
            return NODE_IMAGE
    with tempfile.TemporaryDirectory(prefix="docker-xms-lab-", dir="/var/tmp") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        rootfs.build(rootfs.RootfsSpec(suite="bookworm", packages=NODE_PACKAGES), tarball)
        repository, tag = NODE_IMAGE.split(":")
        changes = ['CMD ["dockerd"]', f"LABEL {LABEL_RECIPE}={want}", f"LABEL {TEST_LABEL}=swarm-node"]
        client.api.import_image(str(tarball), repository=repository, tag=tag, changes=changes)
    return NODE_IMAGE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Relay:
    """TCP from the lab network's gateway address to the registry on 127.0.0.1, for the nodes' pulls."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.server.settimeout(0.5)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe_pair, args=(conn,), daemon=True).start()

    def _pipe_pair(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        conn.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        back.start()
        pump(conn, upstream)
        back.join(timeout=60)
        conn.close()
        upstream.close()

    def close(self) -> None:
        self.stopping = True
        self.server.close()
        self.thread.join(timeout=5)


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as response:
            return int(response.status) == 200
    except OSError:
        return False


def cgroup_dirs(name: str) -> list[Path]:
    """/sys/fs/cgroup/<controller>/<name> in every mounted controller (co-mounted ones once)."""
    out = []
    for controller in sorted(CGROUP_ROOT.iterdir()):
        if controller.is_symlink() or not controller.is_dir():
            continue
        if (controller / name).is_dir():
            out.append(controller / name)
    return out


def remove_cgroup_tree(path: Path) -> None:
    """rmdir a cgroup and everything below it, deepest first (cgroupfs refuses a non-empty directory)."""
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(FileNotFoundError):
            sub.rmdir()
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()


def _read_us(path: Path) -> int:
    return int((path / "cpu.rt_runtime_us").read_text())


def _write_us(path: Path, value: int) -> None:
    (path / "cpu.rt_runtime_us").write_text(f"{value}\n")


def make_room(host_parent: Path, value: int) -> None:
    """Lower the host's parent to `value`, so that the node parents' pools fit under the kernel's limit.

    Only what no container holds is taken: where the host's containers hold more than `value`, the lab
    refuses rather than shrink budgets it did not grant (on a production host they are someone's calls).
    """
    try:
        _write_us(host_parent, value)
    except OSError as exc:
        raise RuntimeError(
            f"the swarm lab needs {_read_us(host_parent) - value} us of the host's real-time pool, and the "
            f"host's containers hold it ({exc.strerror}): run the lab where they hold {value} us or less"
        ) from None


@dataclass
class Node:
    name: str  # also its hostname and, under /, its cgroup parent
    container: Any
    address: str
    socket: Path

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def sh(self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 120) -> str:
        """A command inside the node (its engine's CLI, iptables-save, ...); its stdout."""
        done = subprocess.run(
            ["docker", "exec", "-i", self.container.id, *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} on {self.name} failed: {done.stderr.strip()}")
        return done.stdout

    def docker(self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 120) -> str:
        """The host's docker CLI against this node's engine."""
        done = subprocess.run(
            ["docker", "-H", self.docker_host, *argv], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(argv)} on {self.name} failed: {done.stderr.strip()}")
        return done.stdout

    def answers(self) -> bool:
        """Whether the node's engine answers (`docker version` prints the client's part even when it does not)."""
        done = subprocess.run(
            ["docker", "-H", self.docker_host, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=30,
        )
        return done.returncode == 0

    @property
    def parent(self) -> str:
        return f"/{self.name}"

    def cpu_dir(self) -> Path:
        return CGROUP_ROOT / "cpu" / self.name

    def iptables(self) -> str:
        return self.sh("iptables-save", "-t", "nat")


@dataclass
class Lab:
    client: Any
    network: Any
    gateway: str
    registry_port: int
    nodes: list[Node] = field(default_factory=list)
    token: str = ""
    # Images pushed into the registry, by short name, as the nodes pull them.
    images: dict[str, str] = field(default_factory=dict)

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def registry(self) -> str:
        """The registry as the nodes name it."""
        return f"{self.gateway}:{self.registry_port}"

    @property
    def push_registry(self) -> str:
        """The same registry as the host's engine names it (it trusts 127.0.0.0/8 without TLS)."""
        return f"127.0.0.1:{self.registry_port}"

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def _start_node(client: Any, lab: Lab, name: str, image: str) -> Node:
    run_dir = LAB_RUN / lab.token / name
    run_dir.mkdir(parents=True)
    command = [
        "dockerd",
        f"--cgroup-parent=/{name}",
        f"--insecure-registry={lab.registry}",
        f"--node-generic-resource=RT_MS={NODE_POOL_US // 1000}",
        "-H",
        "unix:///var/run/docker.sock",
        "-H",
        "unix:///lab/docker.sock",
    ]
    container = client.containers.run(
        image,
        command,
        name=f"docker-xms-{name}-{lab.token}",
        hostname=name,
        detach=True,
        # SYS_NICE too: a node can give its tasks (media servers, the agent) only capabilities it has itself.
        cap_add=["SYS_ADMIN", "NET_ADMIN", "SYS_NICE"],
        security_opt=["seccomp=unconfined"],
        tmpfs={"/run": ""},
        # The engine's state in an anonymous volume (ext4, so its overlay2 works; gone with the node's
        # container): a node restarted whole comes back with its swarm membership, images and tasks.
        mounts=[docker.types.Mount("/var/lib/docker", None, type="volume")],
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            str(run_dir): {"bind": "/lab", "mode": "rw"},
        },
        network=lab.network.name,
        labels={TEST_LABEL: "swarm-lab", LAB_LABEL: lab.token},
    )
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][lab.network.name]["IPAddress"]
    node = Node(name, container, address, run_dir / "docker.sock")
    wait_for(node.answers, timeout=60, what=f"the engine in {name}")
    return node


@contextlib.contextmanager
def swarm_lab(client: Any, names: tuple[str, ...] = ("lab-n0", "lab-n1", "lab-n2")) -> Iterator[Lab]:
    """Registry, network, node parents and nodes, joined into one swarm; everything is taken away at the end."""
    if shutil.which("docker-registry") is None:
        raise RuntimeError("the swarm lab needs Debian's docker-registry package")
    image = ensure_node_image(client)
    token = secrets.token_hex(3)
    host_parent = CGROUP_ROOT / "cpu" / HOST_PARENT
    host_before = _read_us(host_parent)
    network = None
    registry = None
    relay = None
    lab: Lab | None = None
    made_parents: list[str] = []
    try:
        network = client.networks.create(f"docker-xms-lab-{token}", driver="bridge", labels={TEST_LABEL: "swarm-lab"})
        network.reload()
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        port = _free_port()
        root = LAB_RUN / token / "registry"
        root.mkdir(parents=True)
        (root / "config.yml").write_text(
            f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        log = (root / "log").open("wb")
        registry = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=log)
        wait_for(lambda: _answers(port), timeout=20, what="the registry to answer")
        relay = Relay((gateway, port), ("127.0.0.1", port))
        lab = Lab(client, network, gateway, port, token=token)

        # The node pools come out of what the host's /docker may hold: the kernel's limit is shared.
        make_room(host_parent, host_before - len(names) * NODE_POOL_US)
        for name in names:
            for path in (CGROUP_ROOT / "cpu" / name,):
                path.mkdir()
                made_parents.append(name)
                _write_us(path, NODE_POOL_US)
        for name in names:
            lab.nodes.append(_start_node(client, lab, name, image))

        manager = lab.manager
        manager.docker("swarm", "init", "--advertise-addr", manager.address)
        join = manager.docker("swarm", "join-token", "-q", "worker").strip()
        for worker in lab.nodes[1:]:
            worker.docker("swarm", "join", "--token", join, f"{manager.address}:2377")

        def all_ready() -> bool:
            out = manager.docker("node", "ls", "--format", "{{.Status}}", check=False).split()
            return out.count("Ready") == len(names)

        wait_for(all_ready, timeout=90, what="every node Ready")
        yield lab
    finally:
        teardown(client, network, registry, relay, made_parents, (host_parent, host_before), token)


def teardown(
    client: Any,
    network: Any,
    registry: subprocess.Popen[bytes] | None,
    relay: Relay | None,
    parents: list[str],
    host: tuple[Path, int],
    token: str,
) -> None:
    host_parent, host_before = host
    for container in client.containers.list(all=True, filters={"label": f"{LAB_LABEL}={token}"}):
        container.remove(force=True, v=True)
    # The node engines are gone with their containers; their tasks' cgroups stay behind as empty directories.
    for name in parents:
        for path in cgroup_dirs(name):
            remove_cgroup_tree(path)
    # The kernel frees a removed group's runtime a moment after the rmdir: retry the give-back briefly.
    deadline = time.monotonic() + 10
    while True:
        try:
            _write_us(host_parent, host_before)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    if network is not None:
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()
    if relay is not None:
        relay.close()
    if registry is not None:
        registry.terminate()
        registry.wait(timeout=10)
    shutil.rmtree(LAB_RUN / token, ignore_errors=True)
    with contextlib.suppress(OSError):
        LAB_RUN.rmdir()


def leftovers(client: Any, token: str, names: tuple[str, ...]) -> list[str]:
    """What a lab left behind on this machine: nothing, once torn down."""
    found = [f"container {c.name}" for c in client.containers.list(all=True, filters={"label": f"{LAB_LABEL}={token}"})]
    found += [f"network {n.name}" for n in client.networks.list(names=[f"docker-xms-lab-{token}"])]
    found += [f"cgroup {p}" for name in names for p in cgroup_dirs(name)]
    if (LAB_RUN / token).exists():
        found.append(f"directory {LAB_RUN / token}")
    return found


def pool_split(node: Node) -> dict[str, int]:
    """The real-time runtime each task holds under a node's parent, by container id."""
    base = node.cpu_dir()
    return {entry.name: _read_us(entry) for entry in base.iterdir() if (entry / "cpu.rt_runtime_us").is_file()}


CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def in_netns(pid: int, make: Callable[[], T]) -> T:
    """`make()` run by a thread in the network namespace of process `pid`: a socket it opens stays there.

    setns moves only the calling thread, so the test's other sockets stay in this machine's namespace.
    """
    made: list[T] = []
    errors: list[BaseException] = []

    def enter_and_make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into the network namespace of {pid} failed")
            finally:
                os.close(fd)
            made.append(make())
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=enter_and_make)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return made[0]


# A task's media forward in a node's nat table: host ports, the container id (12 digits), its address and ports.
FORWARD = re.compile(
    r"-A DOCKER-XMS .*--dport (\d+):(\d+) .*--comment \"?docker-xms:([0-9a-f]{12}):.*"
    r"-j DNAT --to-destination ([0-9.]+):(\d+)-(\d+)"
)
AGENT_SERVICE = "docker-xms-agent"


def parse_forwards(nat: str) -> dict[str, tuple[int, int, str, int, int]]:
    """Each task's media forward in a nat table's text: id12 -> host ports, address, container ports."""
    return {
        cid: (int(low), int(high), ip, int(start), int(end)) for low, high, cid, ip, start, end in FORWARD.findall(nat)
    }


def forwards(node: Node) -> dict[str, tuple[int, int, str, int, int]]:
    """Each task's media forward on a node."""
    return parse_forwards(node.iptables())


def tasks_on(node: Node, service: str) -> dict[str, str]:
    """A service's running containers on a node: id -> address on the node's bridge."""
    ids = node.docker("ps", "-q", "--no-trunc", "--filter", f"label=com.docker.swarm.service.name={service}").split()
    out = {}
    # A task may end between the listing and the inspect: it is not running then.
    for info in json.loads(node.docker("inspect", *ids, check=False) or "[]") if ids else []:
        bridge = (info["NetworkSettings"]["Networks"] or {}).get("bridge") or {}
        if info["State"]["Running"] and bridge.get("IPAddress"):
            out[info["Id"]] = bridge["IPAddress"]
    return out


def task_states(lab: Lab, service: str) -> list[tuple[str, str]]:
    """The current state and error of each of a service's tasks meant to run, from the manager."""
    out = lab.manager.docker(
        "service", "ps", "--no-trunc", "--filter", "desired-state=running",
        "--format", "{{.CurrentState}}|{{.Error}}", service, check=False,
    )  # fmt: skip
    return [(state, error) for state, _, error in (line.partition("|") for line in out.splitlines() if line.strip())]


def push(lab: Lab, image: str) -> str:
    """A local image pushed into the lab's registry with `docker-xms push`; the name the nodes pull it by."""
    local = f"{lab.push_registry}/docker-xms/{image.rsplit('/', maxsplit=1)[-1]}"
    subprocess.run(["docker", "tag", image, local], check=True)
    try:
        result = run_cli("push", local, timeout=600)
        assert result.code == 0, result.err + result.out
    finally:
        subprocess.run(["docker", "rmi", local], check=True, capture_output=True)
    return local.replace(lab.push_registry, lab.registry)


def agent_running(node: Node) -> bool:
    return bool(node.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={AGENT_SERVICE}").split())


def start_agent_service(lab: Lab, image: str, timeout: float = 180) -> None:
    """docker-xms's agent as a global service (`agent service --create`), running on every node."""
    created = run_cli(
        "agent", "service", "--create", "--image", image, "--cgroup-parent", "/{{.Node.Hostname}}",
        "--rt-pool-us", str(NODE_POOL_US),
        env={**os.environ, "DOCKER_HOST": lab.manager.docker_host}, timeout=120,
    )  # fmt: skip
    assert created.code == 0, created.err + created.out
    wait_for(
        lambda: (
            sum(state.startswith("Running") for state, _ in task_states(lab, AGENT_SERVICE)) == len(lab.nodes)
            and all(agent_running(n) for n in lab.nodes)
        ),
        timeout=timeout,
        what="an agent running on every node",
    )
