"""How late do periodic wake-ups come inside a container, at a given scheduling policy?

Runs cyclictest when the container has it, else a small static probe built on the host and copied in.
The percentiles are computed here from every sample (or cyclictest's per-microsecond histogram), with the same
nearest-rank code that the media measurements use.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from docker_xms.adapters import hostfiles, hostproc
from docker_xms.adapters.cgroups import cpu_steal_ms
from docker_xms.adapters.engine import Engine
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain.stats import Percentiles, histogram_percentiles, percentiles
from docker_xms.errors import BadInput, NotFound, XmsError

PROBE_EXIT_REFUSED = 3
CFLAGS = ("-O2", "-static", "-Wall")
# cyclictest's histogram has one line per microsecond up to this bound; later wake-ups are only counted.
HISTOGRAM_MAX_US = 10_000
_EXEC_NOT_FOUND = (126, 127)


class SchedulingRefused(XmsError):
    """The kernel refused SCHED_FIFO inside the container (EPERM)."""

    def __init__(self, tool: str, priority: int, detail: str) -> None:
        super().__init__(
            f"The kernel refused SCHED_FIFO priority {priority} inside the container ({tool}: {detail}): "
            "give the container a real-time budget (cpu.rt_runtime_us) and CAP_SYS_NICE."
        )
        self.tool = tool
        self.priority = priority


@dataclass(frozen=True)
class ProbeResult:
    """Wake-up lateness inside a container, in microseconds."""

    tool: str
    policy: str
    priority: int
    interval_us: int
    samples: int
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    note: str = ""
    # CPU time the hypervisor took from the host's vCPUs while measuring (None: not known); the same for all
    # containers, and the usual cause of millisecond outliers on virtual machines whatever the scheduling.
    steal_ms: float | None = None


def probe_source() -> bytes:
    return hostfiles.package_asset("assets/probe/probe.c")


# Where the probe is built when the user's cache is not theirs alone.
PRIVATE_CACHE = Path("/var/cache/docker-xms")


def default_cache_dir() -> Path:
    return hostfiles.user_cache_dir()


def build_probe(cache_dir: Path | None = None, compiler: str = "cc") -> Path:
    """Compile the probe once per source and flags; returns the path of the static binary in the cache."""
    source = probe_source()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    directory = (cache_dir or default_cache_dir()) / f"probe-{digest}"
    binary = directory / "probe"
    if not hostfiles.owned_by_us(binary, directory, directory.parent):
        # A cache someone else could write (the HOME of another user under sudo): the binary runs with this
        # process's privileges, so it is kept under /var/cache, where only root may write, instead.
        directory = PRIVATE_CACHE / f"probe-{digest}"
        binary = directory / "probe"
        if not hostfiles.owned_by_us(binary, directory, PRIVATE_CACHE):
            raise BadInput(f"{PRIVATE_CACHE} may be written by another user; make it root's alone (chmod 700).")
    if binary.is_file():
        return binary
    cc = hostproc.which(compiler)
    if cc is None:
        raise BadInput(
            f"Building the wake-up probe needs a C compiler ({compiler} not found): apt-get install gcc libc6-dev."
        )
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as work:
        src = Path(work) / "probe.c"
        hostfiles.save_bytes(src, source)
        out = Path(work) / "probe"
        proc = hostproc.run([cc, *CFLAGS, "-o", str(out), str(src)], timeout=300)
        if proc.code != 0:
            log = (proc.err or proc.out).strip()
            if "cannot find -lc" in log:
                raise BadInput(
                    "Linking the wake-up probe statically failed (no static C library): apt-get install libc6-dev."
                )
            raise XmsError(f"Compiling the wake-up probe failed: {log.splitlines()[-1] if log else 'no output'}.")
        # A rename, so that a concurrent run sees either no binary or a whole one.
        out.replace(binary)
    return binary


def parse_probe_output(output: str, priority: int) -> tuple[dict[str, object], list[float]]:
    """The probe's summary (its last JSON line) and raw samples (lines holding one integer)."""
    summary: dict[str, object] | None = None
    samples: list[float] = []
    for line in output.splitlines():
        text = line.strip()
        if text.startswith("{"):
            summary = json.loads(text)
        elif text.lstrip("-").isdigit():
            samples.append(float(text))
    if summary is None:
        raise XmsError(f"The wake-up probe printed no summary: {output.strip()[-300:] or 'no output'}.")
    if summary.get("refused"):
        raise SchedulingRefused("probe", priority, "sched_setscheduler returned EPERM")
    return summary, samples


def parse_cyclictest_histogram(output: str) -> Percentiles:
    """Percentiles from `cyclictest -q -h N` output: lines "<us> <count>" and "# Max Latencies: ..." etc."""
    buckets: dict[int, int] = {}
    overflows = 0
    max_us = 0.0
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            buckets[int(parts[0])] = buckets.get(int(parts[0]), 0) + int(parts[1])
        elif line.startswith("# Max Latencies:"):
            max_us = max(float(v) for v in parts[3:]) if parts[3:] else 0.0
        elif line.startswith("# Histogram Overflows:"):
            overflows = sum(int(v) for v in parts[3:])
    if not buckets and not overflows:
        raise XmsError(f"cyclictest printed no histogram: {output.strip()[-300:] or 'no output'}.")
    return histogram_percentiles(buckets, overflows, max_us)


def _run_time_s(interval_us: int, count: int) -> float:
    """How long a probe of `count` wake-ups may run: its own length, and 30 s to start and report."""
    return interval_us * count / 1_000_000 + 30.0


def _has_cyclictest(engine: Engine, container_id: str) -> bool:
    code, _ = engine.exec(container_id, ["cyclictest", "--help"])
    return code not in _EXEC_NOT_FOUND


def _run_cyclictest(engine: Engine, container_id: str, priority: int, interval_us: int, count: int) -> ProbeResult:
    cmd = ["cyclictest", "-q", "-m", "-p", str(priority), "-i", str(interval_us), "-l", str(count)]
    code, out = engine.exec(
        container_id, [*cmd, "-h", str(HISTOGRAM_MAX_US)], timeout_s=_run_time_s(interval_us, count)
    )
    if "Unable to change scheduling policy" in out or "failed to set priority" in out:
        raise SchedulingRefused("cyclictest", priority, out.strip().splitlines()[0])
    if code != 0:
        raise XmsError(f"cyclictest failed in {container_id[:12]} (exit {code}): {out.strip()[-300:]}.")
    stats = parse_cyclictest_histogram(out)
    # cyclictest exits when it cannot get the policy it asked for, so success means it got it.
    policy = "SCHED_FIFO" if priority > 0 else "SCHED_OTHER"
    return ProbeResult(
        "cyclictest", policy, priority, interval_us, stats.count, stats.p50, stats.p99, stats.p999, stats.max
    )


def _put_probe(engine: Engine, container_id: str, binary: bytes) -> str:
    name = f"docker-xms-probe-{secrets.token_hex(4)}"
    # Minimal images may have no /tmp; the root is writable in any container that is not read-only.
    for directory in ("/tmp", ""):  # noqa: S108 - the container's /tmp, and the name is unpredictable
        path = f"{directory}/{name}"
        try:
            engine.put_file(container_id, path, binary, mode=0o755)
        except NotFound:
            continue
        return path
    raise XmsError(f"Could not copy the wake-up probe into {container_id[:12]}: neither /tmp nor / is writable.")


def static_probe_samples(
    engine: Engine, container_id: str, priority: int, interval_us: int, count: int, cache_dir: Path | None = None
) -> tuple[dict[str, object], list[float]]:
    """Run the static probe in the container: its summary line and every wake-up's lateness in us."""
    path = _put_probe(engine, container_id, hostfiles.load_bytes(build_probe(cache_dir)))
    cmd = [path, "-u", "-r", "-p", str(priority), "-i", str(interval_us), "-n", str(count)]
    try:
        code, out = engine.exec(container_id, cmd, timeout_s=_run_time_s(interval_us, count))
    finally:
        # The container is somebody's media server: nothing of the probe stays in it.
        engine.exec(container_id, ["rm", "-f", path])
    if code == PROBE_EXIT_REFUSED:
        raise SchedulingRefused("probe", priority, "sched_setscheduler returned EPERM")
    return _samples(code, out, priority, f"in {container_id[:12]}")


def measure_samples(
    engine: Engine, container_id: str, priority: int, interval_us: int, duration_s: float, cache_dir: Path | None = None
) -> list[float]:
    """Every wake-up's lateness in us, from docker-xms's own probe in a running container (cyclictest
    gives only its histogram, and a caller that keeps its own histogram needs the samples)."""
    count = _checked(priority, interval_us, duration_s)
    return static_probe_samples(engine, container_id, priority, interval_us, count, cache_dir)[1]


def _samples(code: int, out: str, priority: int, where: str) -> tuple[dict[str, object], list[float]]:
    if code != 0:
        raise XmsError(f"The wake-up probe failed {where} (exit {code}): {out.strip()[-300:]}.")
    summary, samples = parse_probe_output(out, priority)
    if not samples:
        raise XmsError("The wake-up probe recorded no samples.")
    return summary, samples


def host_probe_samples(
    priority: int, interval_us: int, count: int, cache_dir: Path | None = None
) -> tuple[dict[str, object], list[float]]:
    """Run the static probe on the host itself, outside any container: the machine's own floor."""
    cmd = [str(build_probe(cache_dir)), "-r", "-p", str(priority), "-i", str(interval_us), "-n", str(count)]
    # The probe's own run time plus a margin: a probe that hangs must not hang the command.
    proc = hostproc.run(cmd, timeout=count * interval_us / 1_000_000 * 2 + 60)
    if proc.code == PROBE_EXIT_REFUSED:
        raise XmsError(
            f"The kernel refused SCHED_FIFO priority {priority} on the host: run as root from a cgroup with a "
            "real-time budget (see docker-xms rt doctor)."
        )
    return _samples(proc.code, proc.out if proc.code == 0 else proc.err, priority, "on the host")


def _probe_result(summary: dict[str, object], samples: list[float], interval_us: int) -> ProbeResult:
    stats = percentiles(samples)
    note = "" if summary.get("mlocked") else "memory not locked (mlockall refused)"
    return ProbeResult(
        "probe",
        str(summary.get("policy", "")),
        int(str(summary.get("priority", 0))),
        interval_us,
        stats.count,
        stats.p50,
        stats.p99,
        stats.p999,
        stats.max,
        note,
    )


def measure_wakeups(
    engine: Engine,
    container_id: str,
    priority: int = 0,
    interval_us: int = 1000,
    duration_s: float = 10.0,
    tool: str = "auto",
    cache_dir: Path | None = None,
) -> ProbeResult:
    """Measure wake-up lateness in a running container: SCHED_FIFO at `priority`, or SCHED_OTHER for 0.

    tool: "auto" (cyclictest if the container has it), "cyclictest" or "probe". Raises SchedulingRefused when the
    kernel refuses SCHED_FIFO, which on RT_GROUP_SCHED kernels means the container has no real-time budget.
    """
    count = _checked(priority, interval_us, duration_s)
    if tool not in ("auto", "cyclictest", "probe"):
        raise BadInput(f"The measuring tool is auto, cyclictest or probe, not {tool}.")
    return _with_steal(lambda: _measure_in(engine, container_id, priority, interval_us, count, tool, cache_dir))


def _measure_in(
    engine: Engine, container_id: str, priority: int, interval_us: int, count: int, tool: str, cache_dir: Path | None
) -> ProbeResult:
    if tool == "probe":
        return _run_static_probe(engine, container_id, priority, interval_us, count, cache_dir)
    if not _has_cyclictest(engine, container_id):
        if tool == "cyclictest":
            raise BadInput(f"Container {container_id[:12]} has no cyclictest: install rt-tests in its image.")
        return _run_static_probe(engine, container_id, priority, interval_us, count, cache_dir)
    try:
        return _run_cyclictest(engine, container_id, priority, interval_us, count)
    except SchedulingRefused:
        # cyclictest insists on trying SCHED_FIFO even when asked for SCHED_OTHER; the probe does not.
        if priority > 0 or tool == "cyclictest":
            raise
    result = _run_static_probe(engine, container_id, priority, interval_us, count, cache_dir)
    return replace(result, note="cyclictest refused to run without SCHED_FIFO; used the probe")


def _run_static_probe(
    engine: Engine, container_id: str, priority: int, interval_us: int, count: int, cache_dir: Path | None
) -> ProbeResult:
    summary, samples = static_probe_samples(engine, container_id, priority, interval_us, count, cache_dir)
    return _probe_result(summary, samples, interval_us)


def _checked(priority: int, interval_us: int, duration_s: float) -> int:
    """The number of wake-ups to measure, once the arguments are known to be sound."""
    if duration_s <= 0 or interval_us <= 0:
        raise BadInput("--seconds and --interval-us must be above 0.")
    if not 0 <= priority <= 99:
        raise BadInput(f"A SCHED_FIFO priority is 1..99 (0 for SCHED_OTHER), not {priority}.")
    if interval_us < 50:
        raise BadInput(f"An interval under 50 us measures the probe, not the scheduler ({interval_us} us given).")
    return max(1, round(duration_s * 1_000_000 / interval_us))


def _with_steal(measure: Callable[[], ProbeResult]) -> ProbeResult:
    before = cpu_steal_ms()
    result = measure()
    after = cpu_steal_ms()
    return replace(result, steal_ms=None if before is None or after is None else round(after - before, 1))


def probe_container(
    engine: Engine,
    ref: str,
    priority: int | None = None,
    interval_us: int = 1000,
    duration_s: float = 10.0,
    tool: str = "auto",
    profile_dirs: Sequence[Path] = (),
) -> tuple[str, ProbeResult]:
    """The probe in a container named by the user, at its profile's real-time priority unless one is given."""
    _checked(priority or 0, interval_us, duration_s)
    info = engine.get_container(ref)
    if not info.running:
        raise BadInput(f"Container {info.name} is not running ({info.status}).")
    if priority is None:
        profile_name = info.label("profile")
        priority = load_profile(profile_name, profile_dirs, installed_only=True).rt_priority if profile_name else 50
    return info.name, measure_wakeups(engine, info.id, priority, interval_us, duration_s, tool)


def probe_host(
    priority: int | None = None,
    interval_us: int = 1000,
    duration_s: float = 10.0,
    profile: str = "rtpengine",
    cache_dir: Path | None = None,
    tool: str = "auto",
    profile_dirs: Sequence[Path] = (),
) -> ProbeResult:
    """The probe on the host, outside any container, at the profile's priority unless one is given.

    This is the floor: what the machine gives any process. A container can only be compared against it.
    """
    if tool == "cyclictest":
        raise BadInput("--host runs docker-xms's own probe; --tool cyclictest applies to containers only.")
    if priority is None:
        priority = load_profile(profile, profile_dirs).rt_priority
    count = _checked(priority, interval_us, duration_s)

    def measure() -> ProbeResult:
        summary, samples = host_probe_samples(priority, interval_us, count, cache_dir)
        return _probe_result(summary, samples, interval_us)

    return _with_steal(measure)
