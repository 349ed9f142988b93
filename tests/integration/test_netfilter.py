"""DNAT range forwards against the real netfilter and the real engine.

Every test uses chains of its own name (not the DOCKER-XMS chains a running docker-xms uses), sends
datagrams only to 127.0.0.1, and forwards them only to containers it created. The echo server runs
in the container's network namespace (through nsenter) because the busybox image has no UDP server.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from docker_xms.domain.forwards import DnatForward
from docker_xms.domain.ports import plan_ports
from docker_xms.domain.profiles import parse_profile
from docker_xms.errors import XmsError
from tests.netfilter_helpers import ScratchNetfilter as Netfilter

pytestmark = pytest.mark.engine

REPOSITORY, TAG = "docker-xms-test/netfilter-busybox", "1"
IMAGE = f"{REPOSITORY}:{TAG}"
TEST_LABEL = {"io.docker-xms.test": "netfilter"}
# Host ports below the kernel's ephemeral range, so no other local traffic is caught while a rule lives.
HOST_BASE = 23000

ECHO_SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    sel.register(s, selectors.EVENT_READ, port)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        data, peer = key.fileobj.recvfrom(2048)
        key.fileobj.sendto(b"%d:" % key.data + data, peer)
"""


@pytest.fixture(scope="session")
def client() -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("netfilter tests need root")
    docker = pytest.importorskip("docker")
    try:
        engine = docker.from_env(timeout=120)
        engine.ping()
    except Exception as exc:
        pytest.skip(f"no Docker engine: {exc}")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def image(client: Any) -> str:
    """A busybox-only image, imported once and kept for later sessions."""
    if client.images.list(name=IMAGE):
        return IMAGE
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        pytest.skip("needs /bin/busybox (Debian package busybox-static)")
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
    client.api.import_image_from_data(
        data.getvalue(),
        repository=REPOSITORY,
        tag=TAG,
        changes=['CMD ["/bin/busybox", "sleep", "86400"]'],
    )
    return IMAGE


@pytest.fixture
def start(client: Any, image: str) -> Iterator[Callable[[], Any]]:
    """Start labelled test containers; all are removed at the end."""
    created: list[Any] = []

    def run() -> Any:
        container = client.containers.run(image, detach=True, labels=TEST_LABEL, network_mode="bridge")
        created.append(container)
        container.reload()
        return container

    yield run
    for container in created:
        try:
            container.remove(force=True)
        except Exception as exc:  # already removed by the test
            if "No such container" not in str(exc):
                raise


@pytest.fixture
def nf() -> Iterator[Netfilter]:
    if not Netfilter().available():
        pytest.skip("iptables is not usable here")
    # The netfilter lock every docker-xms takes: route_localnet on the bridge is shared with the chains of a
    # docker-xms agent running beside the tests, and handing it over is safe only under one lock (with a lock
    # of its own, the agent could set it back to 0 after these chains had found it on and kept it so).
    netfilter = Netfilter(chain=f"DXT-{os.getpid() % 100000}")
    netfilter.remove_all()
    # ensure_chains turns route_localnet on and leaves it on; the host gets its own value back.
    localnet = Path(f"/proc/sys/net/ipv4/conf/{netfilter.bridge}/route_localnet")
    was = localnet.read_text() if localnet.exists() else None
    yield netfilter
    netfilter.remove_all()
    if was is not None:
        localnet.write_text(was)


def ip_of(container: Any) -> str:
    return str(container.attrs["NetworkSettings"]["IPAddress"])


@pytest.fixture
def echo(request: pytest.FixtureRequest) -> Iterator[Callable[[Any, list[int]], None]]:
    servers: list[subprocess.Popen[str]] = []

    def serve(container: Any, ports: list[int]) -> None:
        pid = str(container.attrs["State"]["Pid"])
        server = subprocess.Popen(
            ["nsenter", "-t", pid, "-n", "--", sys.executable, "-c", ECHO_SERVER, *map(str, ports)],
            stdout=subprocess.PIPE,
            text=True,
        )
        servers.append(server)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"

    yield serve
    for server in servers:
        server.kill()
        server.wait()


def exchange(port: int, payload: bytes = b"hello", timeout: float = 2.0) -> bytes | None:
    """Send one datagram to 127.0.0.1:port; the answer, or None if none came."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.send(payload)
        try:
            return s.recv(2048)
        except (TimeoutError, ConnectionRefusedError):
            return None


def snapshot(nf: Netfilter) -> list[str]:
    """nat and filter tables as iptables-save prints them, without counters and Docker's own changing lines."""
    lines: list[str] = []
    for table in ("nat", "filter"):
        text = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=True).stdout
        for raw in text.splitlines():
            if raw.startswith("#"):
                continue
            line = re.sub(r" \[\d+:\d+\]$", "", raw)
            chain = line.split()[1] if line.startswith("-A ") else line[1:].split()[0] if line.startswith(":") else ""
            if chain.startswith("DOCKER") or (chain.startswith("DXT-") and not chain.startswith(nf.nat_chain)):
                continue
            # Docker's per-container hairpin masquerades and other test runs' jumps come and go.
            if chain == "POSTROUTING" and "MASQUERADE" in line and nf.post_chain not in line:
                continue
            if "-j DXT-" in line and f"-j {nf.nat_chain}" not in line:
                continue
            lines.append(line)
    return lines


def owned_by(container_id: str) -> list[str]:
    """The container's rules in both tables, as `iptables-save` prints them."""
    text = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return [line for line in text.splitlines() if f"docker-xms:{container_id[:12]}:" in line]


def iptables(*args: str) -> None:
    subprocess.run(["iptables", "-w", *args], check=True, capture_output=True)


def test_a_datagram_to_loopback_reaches_the_container_port_for_port_and_its_echo_returns(
    nf: Netfilter, start: Callable[[], Any], echo: Callable[[Any, list[int]], None]
) -> None:
    container = start()
    nf.ensure_chains()
    nf.add_container(
        container.id, [DnatForward("rtp", "udp", HOST_BASE, HOST_BASE + 99, 30000, 30099, ip_of(container))]
    )
    echo(container, [30000, 30042, 30099])

    assert exchange(HOST_BASE + 42) == b"30042:hello"
    assert exchange(HOST_BASE) == b"30000:hello"
    assert exchange(HOST_BASE + 99) == b"30099:hello"
    assert Path(f"/proc/sys/net/ipv4/conf/{nf.bridge}/route_localnet").read_text().strip() == "1"


def test_remove_container_leaves_no_rule_and_no_path(
    nf: Netfilter, start: Callable[[], Any], echo: Callable[[Any, list[int]], None]
) -> None:
    container = start()
    nf.ensure_chains()
    nf.add_forward(container.id, ip_of(container), "udp", HOST_BASE + 100, HOST_BASE + 100, 30500, 30500, name="one")
    echo(container, [30500])
    assert exchange(HOST_BASE + 100) == b"30500:hello"
    assert len(owned_by(container.id)) == 3

    assert nf.remove_container(container.id) == 3
    assert owned_by(container.id) == []
    assert nf.list_forwards() == []
    assert exchange(HOST_BASE + 100, timeout=0.5) is None


def test_reconcile_removes_rules_of_gone_containers_and_restores_missing_ones(
    nf: Netfilter, start: Callable[[], Any], echo: Callable[[Any, list[int]], None]
) -> None:
    gone, kept = start(), start()
    kept_specs = [DnatForward("rtp", "udp", HOST_BASE + 300, HOST_BASE + 309, 31000, 31009, ip_of(kept))]
    nf.ensure_chains()
    nf.add_container(gone.id, [DnatForward("rtp", "udp", HOST_BASE + 200, HOST_BASE + 209, 31000, 31009, ip_of(gone))])
    nf.add_container(kept.id, kept_specs)
    gone.remove(force=True)

    result = nf.reconcile({kept.id: kept_specs})
    assert (result.removed, result.added) == ((gone.id[:12],), ())
    assert owned_by(gone.id) == []
    assert [f.spec for f in nf.list_forwards()] == kept_specs

    # A rule deleted behind our back comes back; a second run changes nothing.
    accept = next(line for line in owned_by(kept.id) if "-j ACCEPT" in line)
    iptables("-D", *shlex.split(accept)[1:])
    assert nf.reconcile({kept.id: kept_specs}).added == (kept.id[:12],)
    assert nf.reconcile({kept.id: kept_specs}) == type(result)((), ())
    assert len(owned_by(kept.id)) == 3
    echo(kept, [31005])
    assert exchange(HOST_BASE + 305) == b"31005:hello"


def test_a_failing_rule_takes_back_the_containers_earlier_rules(nf: Netfilter, start: Callable[[], Any]) -> None:
    container = start()
    nf.ensure_chains()
    # Without the filter chain the third rule of the first range fails after two nat rules went in.
    for line in subprocess.run(
        ["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        if line.endswith(f"-j {nf.filter_chain}"):
            iptables("-D", *shlex.split(line)[1:])
    iptables("-X", nf.filter_chain)
    specs = [
        DnatForward("rtp", "udp", HOST_BASE + 400, HOST_BASE + 409, 32000, 32009, ip_of(container)),
        DnatForward("rtcp", "udp", HOST_BASE + 410, HOST_BASE + 419, 32010, 32019, ip_of(container)),
    ]
    with pytest.raises(XmsError, match=rf"iptables refused '-t filter -A {nf.filter_chain} .*ACCEPT'") as caught:
        nf.add_container(container.id, specs)
    assert "\n" not in caught.value.message
    assert owned_by(container.id) == []

    nf.ensure_chains()
    nf.add_container(container.id, specs)
    assert len(owned_by(container.id)) == 6


def test_a_hundred_add_remove_cycles_leave_the_tables_as_they_were(nf: Netfilter, start: Callable[[], Any]) -> None:
    container = start()
    nf.ensure_chains()
    before = snapshot(nf)
    specs = [
        DnatForward("rtp", "udp", HOST_BASE + 500, HOST_BASE + 599, 49152, 49251, ip_of(container)),
        DnatForward("udp-57344", "udp", HOST_BASE + 600, HOST_BASE + 609, 57344, 57353, ip_of(container)),
    ]
    began = time.perf_counter()
    for _ in range(100):
        nf.add_container(container.id, specs)
        assert nf.remove_container(container.id) == 6
    elapsed = time.perf_counter() - began
    nf.ensure_chains()
    assert snapshot(nf) == before
    print(f"\n100 add/remove cycles of 2 ranges: {elapsed:.1f} s ({elapsed * 10:.0f} ms a cycle)")


def test_remove_all_gives_back_the_tables_as_they_were_before(nf: Netfilter, start: Callable[[], Any]) -> None:
    container = start()
    before = snapshot(nf)
    nf.ensure_chains()
    nf.ensure_chains()
    nf.add_forward(container.id, ip_of(container), "udp", HOST_BASE + 700, HOST_BASE + 709, 33000, 33009)
    assert snapshot(nf) != before
    nf.remove_all()
    assert snapshot(nf) == before
    nf.remove_all()


def test_concurrent_changes_all_land(nf: Netfilter, start: Callable[[], Any]) -> None:
    container = start()
    nf.ensure_chains()
    ids = [f"{i:012x}" for i in range(1, 21)]
    errors: list[BaseException] = []

    def add(mine: list[str]) -> None:
        try:
            for i, cid in enumerate(mine):
                port = HOST_BASE + 800 + int(cid, 16) * 2
                nf.add_forward(cid, ip_of(container), "udp", port, port + 1, 34000 + i, 34001 + i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(ids[k::2],)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(f.container_id for f in nf.list_forwards()) == ids
    for cid in ids:
        nf.remove_container(cid)
    assert nf.list_forwards() == []


@pytest.mark.slow
def test_xms_media_ports_take_two_rules_and_a_few_milliseconds(
    nf: Netfilter, start: Callable[[], Any], echo: Callable[[Any, list[int]], None], capsys: pytest.CaptureFixture[str]
) -> None:
    xms = parse_profile((resources.files("docker_xms") / "profiles" / "xms.toml").read_text("utf-8"), "xms.toml")
    plan = plan_ports(xms.ports, xms.media_ranges, "container-address", "dnat", host_pool=(24000, 32767))
    assert plan.media_port_count == 4498
    container = start()
    specs = [f.to(ip_of(container)) for f in plan.forwards]
    began = time.perf_counter()
    nf.ensure_chains()
    ensured = time.perf_counter()
    nf.add_container(container.id, specs)
    added = time.perf_counter()
    listed = nf.list_forwards()
    echo(container, [53152, 57344])
    # The last port of the first range and the first of the second land on their own container ports.
    assert exchange(plan.forwards[0].host_end) == b"53152:hello"
    assert exchange(plan.forwards[1].host_start) == b"57344:hello"
    removing = time.perf_counter()
    nf.remove_container(container.id)
    removed = time.perf_counter()
    assert [f.spec for f in listed] == specs
    with capsys.disabled():
        print(
            f"\nXMS {plan.media_port_count} media ports in {len(specs)} ranges: ensure_chains "
            f"{(ensured - began) * 1000:.0f} ms, add {(added - ensured) * 1000:.0f} ms, "
            f"remove {(removed - removing) * 1000:.0f} ms"
        )


def _chain_rules(table: str, chain: str) -> list[str]:
    text = subprocess.run(["iptables", "-t", table, "-S", chain], capture_output=True, text=True, check=True).stdout
    return [line for line in text.splitlines() if line.startswith("-A ")]


def test_an_administrators_rule_above_ours_in_docker_user_stays_above(nf: Netfilter) -> None:
    if subprocess.run(["iptables", "-S", "DOCKER-USER"], capture_output=True).returncode != 0:
        pytest.skip("this engine made no DOCKER-USER chain")
    nf.ensure_chains()
    # An address of TEST-NET-1 (RFC 5737): no packet of this host comes from it.
    admin = ["-s", "192.0.2.77/32", "-m", "comment", "--comment", f"admin-{nf.nat_chain}", "-j", "DROP"]
    iptables("-I", "DOCKER-USER", "1", *admin)
    try:
        for _ in range(3):
            nf.ensure_chains()
            nf.reconcile({})
        rules = _chain_rules("filter", "DOCKER-USER")
        ours = [i for i, line in enumerate(rules) if line.endswith(f"-j {nf.filter_chain}")]
        mine = [i for i, line in enumerate(rules) if f"admin-{nf.nat_chain}" in line]
        assert len(ours) == 1, rules
        assert len(mine) == 1, rules
        assert mine[0] < ours[0], rules
    finally:
        iptables("-D", "DOCKER-USER", *admin)


def test_ours_goes_back_in_front_of_dockers_jump_once_and_below_an_administrators_rule(nf: Netfilter) -> None:
    nf.ensure_chains()
    jump = next(line for line in _chain_rules("nat", "PREROUTING") if line.endswith(f"-j {nf.nat_chain}"))
    admin = ["-s", "192.0.2.78/32", "-m", "comment", "--comment", f"admin-{nf.nat_chain}", "-j", "RETURN"]
    # As after an engine restart: Docker's jump first, ours after it; and an administrator's rule on top.
    iptables("-t", "nat", "-D", *shlex.split(jump)[1:])
    iptables("-t", "nat", "-A", *shlex.split(jump)[1:])
    iptables("-t", "nat", "-I", "PREROUTING", "1", *admin)
    try:
        for _ in range(3):
            nf.ensure_chains()
        rules = _chain_rules("nat", "PREROUTING")
        ours = [i for i, line in enumerate(rules) if line.endswith(f"-j {nf.nat_chain}")]
        docker = [i for i, line in enumerate(rules) if line.endswith("-j DOCKER")]
        mine = [i for i, line in enumerate(rules) if f"admin-{nf.nat_chain}" in line]
        assert len(ours) == 1, rules
        assert mine[0] < ours[0], rules
        if docker:
            assert ours[0] < docker[0], rules
    finally:
        iptables("-t", "nat", "-D", "PREROUTING", *admin)


def _localnet(nf: Netfilter) -> str:
    return Path(f"/proc/sys/net/ipv4/conf/{nf.bridge}/route_localnet").read_text().strip()


def _other_guards(nf: Netfilter) -> list[str]:
    return [
        line
        for line in _chain_rules("filter", "INPUT")
        if "docker-xms:route_localnet:" in line and not line.endswith(f"-j {nf.input_chain}")
    ]


def test_route_localnet_comes_back_to_its_value_when_the_last_forward_goes(
    nf: Netfilter, start: Callable[[], Any]
) -> None:
    if not Path(f"/proc/sys/net/ipv4/conf/{nf.bridge}").exists():
        pytest.skip(f"no bridge {nf.bridge}")
    others = _other_guards(nf)
    if not others:
        # Nothing relies on it now (the fixture gives the host its value back at the end).
        Path(f"/proc/sys/net/ipv4/conf/{nf.bridge}/route_localnet").write_text("0\n")
    was = _localnet(nf)
    # Another docker-xms's forwards (the demo's) turned it on first: the value from before that is kept.
    match = re.search(r"route_localnet:[^:]+:([01])", others[0]) if others else None
    before = match.group(1) if match else was
    container = start()
    specs = [DnatForward("rtp", "udp", HOST_BASE + 900, HOST_BASE + 909, 35000, 35009, ip_of(container))]
    nf.ensure_chains()
    assert _localnet(nf) == was
    nf.add_container(container.id, specs)
    assert _localnet(nf) == "1"
    jump = [line for line in _chain_rules("filter", "INPUT") if line.endswith(f"-j {nf.input_chain}")]
    assert len(jump) == 1
    assert f"docker-xms:route_localnet:{nf.bridge}:{before}" in jump[0]

    nf.remove_container(container.id)
    # Back to what it was; still on while the other docker-xms's forwards need it.
    assert _localnet(nf) == was
    assert not [line for line in _chain_rules("filter", "INPUT") if line.endswith(f"-j {nf.input_chain}")]

    # The same through reconciliation, the way the agent and every command call it.
    nf.reconcile({container.id: specs})
    assert _localnet(nf) == "1"
    nf.reconcile({})
    assert _localnet(nf) == was
    assert subprocess.run(["iptables", "-S", nf.input_chain], capture_output=True).returncode != 0


SEND_FRAME = r"""
import socket, struct, sys
dst_mac, src_mac, src_ip, dst_ip, port = sys.argv[1:6]
payload = b"martian"
udp = struct.pack("!HHHH", 40000, int(port), 8 + len(payload), 0) + payload
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
mac = lambda text: bytes.fromhex(text.replace(":", ""))
frame = mac(dst_mac) + mac(src_mac) + b"\x08\x00" + header + udp
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind(("eth0", 0))
    for _ in range(3):
        s.send(frame)
"""


def _send_frame(container: Any, dst_mac: str, dst_ip: str, port: int) -> None:
    """An Ethernet frame from the container's eth0 to the host's bridge, as anyone on that network can send."""
    network = container.attrs["NetworkSettings"]
    subprocess.run(
        [
            "nsenter",
            "-t",
            str(container.attrs["State"]["Pid"]),
            "-n",
            "--",
            sys.executable,
            "-c",
            SEND_FRAME,
            dst_mac,
            network["MacAddress"],
            network["IPAddress"],
            dst_ip,
            str(port),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(1.5)
    return sock


def _received(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(2048)
    except TimeoutError:
        return None


def _dropped(nf: Netfilter) -> int:
    text = subprocess.run(
        ["iptables", "-L", nf.input_chain, "-v", "-x", "-n"], capture_output=True, text=True, check=True
    ).stdout
    return sum(int(line.split()[0]) for line in text.splitlines()[2:] if line.strip())


def test_packets_to_loopback_from_the_bridge_are_dropped_while_route_localnet_is_on(
    nf: Netfilter, start: Callable[[], Any], echo: Callable[[Any, list[int]], None]
) -> None:
    bridge = Path(f"/sys/class/net/{nf.bridge}/address")
    if not bridge.exists():
        pytest.skip(f"no bridge {nf.bridge}")
    bridge_mac = bridge.read_text().strip()
    words = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", nf.bridge], capture_output=True, text=True, check=True
    ).stdout.split()
    bridge_ip = words[words.index("inet") + 1].split("/")[0]
    sender, target = start(), start()
    nf.ensure_chains()
    nf.add_container(
        target.id, [DnatForward("rtp", "udp", HOST_BASE + 950, HOST_BASE + 959, 36000, 36009, ip_of(target))]
    )
    assert _localnet(nf) == "1"

    with _listener("127.0.0.1") as loopback, _listener(bridge_ip) as on_bridge:
        # The frame is well formed: sent to the bridge's own address, it arrives.
        _send_frame(sender, bridge_mac, bridge_ip, on_bridge.getsockname()[1])
        assert _received(on_bridge) == b"martian"

        before = _dropped(nf)
        _send_frame(sender, bridge_mac, "127.0.0.1", loopback.getsockname()[1])
        assert _received(loopback) is None
        assert _dropped(nf) >= before + 1

    # 127.0.0.1:PORT still reaches the container through the DNAT.
    echo(target, [36004])
    assert exchange(HOST_BASE + 954) == b"36004:hello"


# --- the reverse of the DNAT, and conntrack ---------------------------------------------------------------


def test_a_forward_that_names_where_media_leaves_from_gets_its_snat_back_from_the_tables(
    nf: Netfilter, start: Callable[[], Any]
) -> None:
    container = start()
    ip = ip_of(container)
    port = HOST_BASE + 1000
    spec = DnatForward("rtp", "udp", port, port + 9, port, port + 9, ip, source_ip="127.0.0.1")
    shifted = DnatForward("rtcp", "udp", port + 10, port + 19, 40010, 40019, ip).leaving_from("127.0.0.1")
    assert shifted.source_ip == ""
    nf.ensure_chains()
    assert nf.reconcile({container.id: [spec, shifted]}).added == (container.id[:12],)
    snat = [line for line in owned_by(container.id) if "-j SNAT" in line]
    # Same numbers: the source port kept, the address the advertised one. A shifted range has no such rule.
    assert snat == [
        f"-A {nf.post_chain} -s {ip}/32 ! -o {nf.bridge} -p udp -m udp --sport {port}:{port + 9} "
        f'-m comment --comment "docker-xms:{container.id[:12]}:rtp" -j SNAT --to-source 127.0.0.1'
    ]
    assert sorted((f.spec for f in nf.list_forwards()), key=lambda f: f.name) == [shifted, spec]
    # Read back exactly as written: a second pass changes nothing; a new address rewrites the rules.
    assert nf.reconcile({container.id: [spec, shifted]}).added == ()
    moved = spec.leaving_from("127.0.0.2")
    assert nf.reconcile({container.id: [moved, shifted]}).added == (container.id[:12],)
    assert [f.spec.source_ip for f in nf.list_forwards() if f.spec.name == "rtp"] == ["127.0.0.2"]
    assert nf.reconcile({}).removed == (container.id[:12],)
    assert owned_by(container.id) == []


def test_our_postrouting_jump_goes_back_in_front_of_the_engines_masquerade(nf: Netfilter) -> None:
    nf.ensure_chains()
    jump = next(line for line in _chain_rules("nat", "POSTROUTING") if line.endswith(f"-j {nf.post_chain}"))
    # As after an engine restart, which inserts its MASQUERADE first: ours would never be reached.
    iptables("-t", "nat", "-D", *shlex.split(jump)[1:])
    iptables("-t", "nat", "-A", *shlex.split(jump)[1:])
    nf.ensure_chains()
    rules = _chain_rules("nat", "POSTROUTING")
    ours = [i for i, line in enumerate(rules) if line.endswith(f"-j {nf.post_chain}")]
    masquerade = [i for i, line in enumerate(rules) if line.endswith("-j MASQUERADE")]
    assert len(ours) == 1, rules
    if masquerade:
        assert ours[0] < masquerade[0], rules


def _entries_to(port: int) -> list[str]:
    out = subprocess.run(["conntrack", "-L", "-p", "udp"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if f" dport={port} " in line]


def test_a_flow_that_began_before_its_forward_reaches_the_container_once_the_forward_exists(
    nf: Netfilter, start: Callable[[], Any], echo: Callable[[Any, list[int]], None]
) -> None:
    """conntrack keeps a flow's first NAT decision: without forgetting it, a stream that started before the
    rule (a peer already sending, as RTP does) would bypass the new DNAT until it paused for 30 s."""
    container = start()
    port = HOST_BASE + 1100
    echo(container, [port])
    nf.ensure_chains()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.bind(("127.0.0.1", 0))
        s.connect(("127.0.0.1", port))
        s.send(b"early")
        with pytest.raises((TimeoutError, ConnectionRefusedError)):
            s.recv(2048)
        assert _entries_to(port), "the early datagram left no conntrack entry"
        nf.reconcile({container.id: [DnatForward("rtp", "udp", port, port, port, port, ip_of(container))]})
        # The same 5-tuple as before: only a fresh NAT decision sends it to the container.
        s.settimeout(2.0)
        s.send(b"again")
        assert s.recv(2048) == f"{port}:again".encode()


def test_a_chain_another_process_made_a_moment_before_counts_as_made(
    nf: Netfilter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of a rollback beside another docker-xms (seen: `-N DOCKER-XMS: Chain already exists`)."""
    nf.ensure_chains()
    # As if another process made the chain between this one's look and its `-N`: the look says no once.
    looks: list[str] = []
    real = nf._exists

    def late(table: str, chain: str) -> bool:
        looks.append(chain)
        return False if len(looks) == 1 else real(table, chain)

    monkeypatch.setattr(nf, "_exists", late)
    nf.ensure_chains()
    assert looks[0] == nf.nat_chain
    assert real("nat", nf.nat_chain)


def test_an_iptables_killed_by_a_signal_is_tried_again_or_found_done(nf: Netfilter, tmp_path: Path) -> None:
    """A storm of signals may kill an iptables on its way to exec (seen: `-X ...: exit status -2` in a
    rollback): the change is checked, and made again when it is not there."""
    marker = tmp_path / "killed"
    wrapper = tmp_path / "iptables"
    # The first call dies of SIGINT before doing anything; the others are the real iptables.
    wrapper.write_text(f'#!/bin/sh\nif [ ! -e {marker} ]; then touch {marker}; kill -INT $$; fi\nexec iptables "$@"\n')
    wrapper.chmod(0o755)
    flaky = Netfilter(chain=nf.nat_chain, iptables=str(wrapper))
    chain = f"{nf.nat_chain}-K"
    try:
        done = flaky._run("nat", ["-N", chain])
        assert done.returncode == 0
        assert marker.exists()
        assert nf._exists("nat", chain)
    finally:
        subprocess.run(["iptables", "-w", "-t", "nat", "-X", chain], capture_output=True)
