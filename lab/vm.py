"""A whole Debian machine under QEMU, for the tests that need a host of a kind this one is not: systemd as
PID 1, cgroup v2 only, a stock distribution kernel without CONFIG_RT_GROUP_SCHED, a newer engine.

The machine's disk is built from Debian's mirror once per recipe (mmdebstrap into a directory, then
`mke2fs -d`, so no loop mount is needed) and cached under /var/cache/docker-xms-lab/<name>-<hash>/. Each boot writes to a
qcow2 overlay of its own, so the cached disk stays as built and every test session starts from a fresh
machine. The stock kernel does not run under this host's KVM, so QEMU emulates the CPU (TCG): a boot takes
a minute or more, and timings inside the guest say nothing about real hardware.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

CACHE = Path("/var/cache/docker-xms-lab")
# Raise this whenever the build steps below change: every cached image is then built again.
BUILD_STEPS_VERSION = 1
BASE_PACKAGES = (
    "systemd-sysv",
    "udev",
    "linux-image-amd64",
    "initramfs-tools",
    "openssh-server",
    "ca-certificates",
    "iproute2",
)
DISK_SIZE = "16G"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# QEMU's user-mode network: the guest's DHCP server and DNS relay.
GUEST_DNS = "10.0.2.3"
WIRED_NETWORK = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
KERNEL_ARGS = "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1"

Say = Callable[[str], None]


class LabError(RuntimeError):
    """The lab machine could not be built, booted or reached; the message says what it last showed."""


class GuestCommandError(LabError):
    def __init__(self, command: str, returncode: int, stdout: str, stderr: str) -> None:
        said = (stderr or stdout).strip()[-2000:]
        super().__init__(f"`{command}` in the guest exited {returncode}" + (f": {said}" if said else ""))
        self.command = command
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


@dataclass(frozen=True)
class GuestRecipe:
    name: str  # also the guest's hostname
    suite: str
    packages: tuple[str, ...] = ()
    # apt options, e.g. 'Acquire::Check-Valid-Until "false"' for a suite whose Release file has expired
    apt_options: tuple[str, ...] = ()
    mirror: str = "http://deb.debian.org/debian"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", self.name):
            raise ValueError(f"{self.name!r} cannot name a lab machine: use lower-case letters, digits and dashes")

    def digest(self) -> str:
        """What decides the cached image: the recipe and the build steps that turn it into a disk."""
        fields = {**dataclasses.asdict(self), "build_steps": BUILD_STEPS_VERSION}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    @property
    def cache_dir(self) -> Path:
        return CACHE / f"{self.name}-{self.digest()[:12]}"


@dataclass(frozen=True)
class GuestImage:
    """A built machine: its disk, the kernel and initrd QEMU loads directly, and the key root logs in with."""

    dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / "disk.img"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"


def ensure_image(recipe: GuestRecipe, say: Say = lambda _: None) -> tuple[GuestImage, bool]:
    """The recipe's image, and whether it had to be built now.

    The cache lock makes a second test process wait for the first one's build and then reuse it. A build
    goes into a hidden directory renamed into place at the very end, so a directory under its final name
    is always complete; what an interrupted build left is removed before the next one starts.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    with _cache_lock():
        image = GuestImage(recipe.cache_dir)
        if image.dir.is_dir():
            return image, False
        for stale in CACHE.glob(".build-*"):
            _remove_build(stale)
        work = Path(tempfile.mkdtemp(prefix=f".build-{recipe.name}-", dir=CACHE))
        try:
            _build(recipe, work, say)
            work.rename(image.dir)
        except BaseException:
            with contextlib.suppress(LabError):
                _remove_build(work)
            raise
        for old in CACHE.iterdir():
            if re.fullmatch(rf"{recipe.name}-[0-9a-f]{{12}}", old.name) and old != image.dir:
                shutil.rmtree(old)
        return image, True


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    with (CACHE / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_build(path: Path) -> None:
    """Remove a failed build, unless an interrupted mmdebstrap left the host's /proc, /sys or /dev mounted
    inside it: removing the tree then would reach into the host's own."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    inside = [mount for mount in mounts if mount.startswith(f"{path}/")]
    if inside:
        raise LabError(f"{path} still has file systems mounted in it ({', '.join(inside)}): unmount them and remove it")
    shutil.rmtree(path)


def _build(recipe: GuestRecipe, work: Path, say: Say) -> None:
    rootfs = work / "rootfs"
    say(f"lab: building {recipe.name} ({recipe.suite}) with mmdebstrap")
    _run(_mmdebstrap_argv(recipe, rootfs))
    key = work / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"docker-xms-lab {recipe.name}", "-f", str(key)])
    _configure(rootfs, recipe.name, key.with_suffix(".pub").read_text())
    shutil.copy(_only(rootfs.glob("boot/vmlinuz-*")), work / "vmlinuz")
    shutil.copy(_only(rootfs.glob("boot/initrd.img-*")), work / "initrd.img")
    say(f"lab: writing {recipe.name}'s {DISK_SIZE} disk (sparse ext4)")
    _run(["mke2fs", "-q", "-t", "ext4", "-F", "-d", str(rootfs), str(work / "disk.img"), DISK_SIZE])
    shutil.rmtree(rootfs)


def _mmdebstrap_argv(recipe: GuestRecipe, rootfs: Path) -> list[str]:
    packages = ",".join((*BASE_PACKAGES, *recipe.packages))
    options = [f"--aptopt={option}" for option in recipe.apt_options]
    return [
        "mmdebstrap",
        "--variant=important",
        f"--include={packages}",
        *options,
        recipe.suite,
        str(rootfs),
        recipe.mirror,
    ]


def _configure(rootfs: Path, hostname: str, public_key: str) -> None:
    """What makes the tree a machine one can reach: a name, DHCP on the first NIC, a root file system
    in fstab, root's key, and the host's CA bundle (this host reaches PyPI through a CA of its own)."""
    _write(rootfs / "etc/hostname", f"{hostname}\n")
    _write(rootfs / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost ip6-localhost\n")
    _write(rootfs / "etc/fstab", "/dev/vda / ext4 rw 0 1\n")
    _write(rootfs / "etc/systemd/network/20-wired.network", WIRED_NETWORK)
    _run(["chroot", str(rootfs), "systemctl", "enable", "systemd-networkd"])
    (rootfs / "etc/resolv.conf").unlink(missing_ok=True)  # may be a symlink into a resolver's run dir
    _write(rootfs / "etc/resolv.conf", f"nameserver {GUEST_DNS}\n")
    ssh_dir = rootfs / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    _write(ssh_dir / "authorized_keys", public_key, mode=0o600)
    shutil.copy(HOST_CA, rootfs / "etc/ssl/certs/ca-certificates.crt")
    shutil.copy(HOST_CA, rootfs / "etc/ssl/certs/host-ca.crt")
    _write(rootfs / "etc/pip.conf", "[global]\ncert = /etc/ssl/certs/host-ca.crt\n")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _only(paths: Iterable[Path]) -> Path:
    found = sorted(paths)
    if len(found) != 1:
        raise LabError(f"expected one file, found {[str(p) for p in found]}")
    return found[0]


def _run(argv: list[str]) -> None:
    """A build step; on failure, the error carries the end of what it printed."""
    with tempfile.TemporaryFile() as out:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            out.seek(0)
            tail = out.read().decode(errors="replace").splitlines()[-30:]
            raise LabError(f"`{shlex.join(argv)}` exited {done.returncode}:\n" + "\n".join(tail))


class Guest:
    """A booted machine from an image; root reaches it by ssh through a forwarded port on 127.0.0.1.

    All it leaves on the host is gone after `close()`: the overlay, the console log and QEMU itself.
    QEMU runs without -no-reboot, so `systemctl reboot` in the guest resets the machine and QEMU loads
    the same kernel again, as a real host reboots.
    """

    def __init__(self, image: GuestImage, memory_mb: int = 4096, cpus: int = 2, boot_timeout: float = 600) -> None:
        self.image = image
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.boot_timeout = boot_timeout
        self.boot_seconds = 0.0
        self.port = 0
        self._up = False
        self._dir: Path | None = None
        self._qemu: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Guest:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        started = time.monotonic()
        self._dir = Path(tempfile.mkdtemp(prefix="docker-xms-guest-", dir="/var/tmp"))
        overlay = self._dir / "overlay.qcow2"
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.image.disk), "-F", "raw", str(overlay)])
        self.port = _free_port()
        with (self._dir / "qemu.log").open("wb") as qemu_log:
            self._qemu = subprocess.Popen(
                self._qemu_argv(self._dir, overlay), stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT
            )
        self._wait_until(self._answers, self.boot_timeout, "the guest's sshd to let root in")
        self._up = True
        self.boot_seconds = time.monotonic() - started

    def _qemu_argv(self, run_dir: Path, overlay: Path) -> list[str]:
        return [
            "qemu-system-x86_64",
            *("-accel", "tcg,thread=multi", "-cpu", "max", "-m", str(self.memory_mb), "-smp", str(self.cpus)),
            *("-nodefaults", "-display", "none", "-monitor", "none", "-serial", f"file:{run_dir / 'console.log'}"),
            *("-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd), "-append", KERNEL_ARGS),
            *("-drive", f"file={overlay},format=qcow2,if=virtio"),
            *("-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{self.port}-:22"),
        ]

    def _ssh(self, remote_command: str) -> list[str]:
        options = [
            *("BatchMode=yes", "ConnectTimeout=5", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"),
            *("LogLevel=ERROR", "ServerAliveInterval=15", "ServerAliveCountMax=4"),
        ]
        flags = [arg for option in options for arg in ("-o", option)]
        return ["ssh", *flags, "-i", str(self.image.key), "-p", str(self.port), "root@127.0.0.1", remote_command]

    def _answers(self) -> bool:
        with contextlib.suppress(subprocess.TimeoutExpired):
            probe = subprocess.run(self._ssh("true"), stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            return probe.returncode == 0
        return False

    def _wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll the guest; QEMU's exit or the deadline ends the wait with the tail of the console."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._qemu is None or self._qemu.poll() is not None:
                raise LabError(
                    f"QEMU exited while waiting for {what}:\n{self._tail('qemu.log', 40)}\n{self.console_tail()}"
                )
            if ready():
                return
            time.sleep(2)
        raise LabError(
            f"timed out after {timeout:.0f} s waiting for {what}; the guest's console ended:\n{self.console_tail()}"
        )

    def console_tail(self, n: int = 40) -> str:
        """The last lines the guest wrote to its serial console (kernel, systemd, getty)."""
        return self._tail("console.log", n)

    def _tail(self, name: str, n: int) -> str:
        if self._dir is None or not (self._dir / name).exists():
            return f"(no {name})"
        return "\n".join((self._dir / name).read_text(errors="replace").splitlines()[-n:])

    def run(
        self, *argv: str, input: str | bytes | None = None, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """A command as root in the guest; argv is quoted for the remote shell, so it runs exactly as given."""
        data = input.encode() if isinstance(input, str) else input
        stdin = subprocess.DEVNULL if data is None else None
        raw = subprocess.run(self._ssh(shlex.join(argv)), input=data, stdin=stdin, capture_output=True, timeout=timeout)
        out, err = raw.stdout.decode(errors="replace"), raw.stderr.decode(errors="replace")
        if check and raw.returncode != 0:
            raise GuestCommandError(shlex.join(argv), raw.returncode, out, err)
        return subprocess.CompletedProcess(list(argv), raw.returncode, out, err)

    def put(self, local: Path, remote: str, timeout: float = 600) -> None:
        """A file into the guest, streamed through ssh."""
        with local.open("rb") as source:
            self._feed(source, f"cat > {shlex.quote(remote)}", timeout)

    def put_tree(self, local_dir: Path, remote_dir: str, timeout: float = 600) -> None:
        """A directory's contents into `remote_dir` (made if missing), as a tar stream."""
        self._pipe(["tar", "-C", str(local_dir), "-cf", "-", "."], self._untar(remote_dir), timeout)

    def put_git(self, repo: Path, remote_dir: str, ref: str = "HEAD", timeout: float = 600) -> None:
        """A commit of a git checkout into `remote_dir`: the tracked files only, without the host's caches."""
        # As a clone by root has them (umask 022): git archive's own default leaves files group-writable, which
        # code a root service runs must not be.
        archive = ["git", "-c", "tar.umask=022", "-C", str(repo), "archive", "--format=tar", ref]
        self._pipe(archive, self._untar(remote_dir), timeout)

    def load_image(self, tag: str, timeout: float = 600, loader: str = "docker load") -> None:
        """An image from the host's engine into the guest's, streamed (`docker save | docker load`, or the
        guest engine's own `loader`, e.g. `podman load`)."""
        self._pipe(["docker", "save", tag], loader, timeout)

    @staticmethod
    def _untar(remote_dir: str) -> str:
        quoted = shlex.quote(remote_dir)
        return f"mkdir -p {quoted} && tar -C {quoted} -xf -"

    def _feed(self, source: IO[bytes], remote_command: str, timeout: float) -> None:
        done = subprocess.run(self._ssh(remote_command), stdin=source, capture_output=True, timeout=timeout)
        if done.returncode != 0:
            raise GuestCommandError(remote_command, done.returncode, "", done.stderr.decode(errors="replace"))

    def _pipe(self, producer: list[str], remote_command: str, timeout: float) -> None:
        """`producer | ssh guest remote_command`, with neither end's failure passing unnoticed."""
        problems = []
        with (
            tempfile.TemporaryFile() as errors,
            subprocess.Popen(producer, stdout=subprocess.PIPE, stderr=errors) as src,
        ):
            assert src.stdout is not None
            try:
                self._feed(src.stdout, remote_command, timeout)
            except LabError as exc:
                problems.append(str(exc))
            finally:
                src.stdout.close()  # a sink that died early must not leave the producer blocked on a full pipe
            if src.wait(timeout=timeout) != 0:
                errors.seek(0)
                said = errors.read().decode(errors="replace").strip()
                problems.insert(0, f"`{shlex.join(producer)}` exited {src.returncode}: {said}")  # the cause comes first
        if problems:
            raise LabError("; ".join(problems))

    def boot_id(self) -> str:
        return self.run("cat", "/proc/sys/kernel/random/boot_id", timeout=60).stdout.strip()

    def reboot(self, timeout: float = 600) -> None:
        """Reboot the guest and wait until it is back: a new boot id, not merely an sshd still answering."""
        before = self.boot_id()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run("systemctl", "reboot", check=False, timeout=60)  # the connection drops as sshd stops
        self._wait_until(lambda: self._boot_id_now() not in ("", before), timeout, "the guest to boot again")

    def _boot_id_now(self) -> str:
        """The boot id, or "" while sshd is down (or still shutting down with the connection half open)."""
        try:
            return self.boot_id()
        except (LabError, subprocess.TimeoutExpired):
            return ""

    def close(self, grace: float = 60) -> None:
        """Shut the guest down as a host is shut down (its services stop in order, QEMU exits with it), kill
        QEMU if it is still there after `grace`, and remove the overlay and the logs: the cached image is never
        written, so nothing of this boot outlives it."""
        if self._qemu is not None:
            if self._up and self._qemu.poll() is None:
                with contextlib.suppress(LabError, subprocess.TimeoutExpired):
                    self.run("systemctl", "poweroff", check=False, timeout=30)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._qemu.wait(timeout=grace)
            if self._qemu.poll() is None:
                self._qemu.kill()
                self._qemu.wait()
            self._qemu = None
            self._up = False
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _free_port() -> int:
    """A port nothing listens on now; QEMU binds it a moment later (a clash makes QEMU exit, and the boot fail)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
