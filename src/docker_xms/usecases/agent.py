"""The agent: keeps budgets and port rules right whatever happens on the host.

It follows the engine's event stream and runs the one reconciliation routine on every container start,
die, destroy and update, at start, after the engine comes back, and every `interval` seconds in case an
event was missed. Commands run the same routine under the same host lock, so the agent and commands
may run together: whichever reconciles last sees the containers as they are. `run_agent` is the agent's
process around that loop: its lock, its metrics exporter, its signals.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docker_xms.adapters import hostlock, signals
from docker_xms.adapters.engine import Engine
from docker_xms.adapters.pmqos import CpuLatencyHold
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain import budget
from docker_xms.domain.engine_types import DEFAULT_BRIDGES, DOCKER
from docker_xms.domain.labels import LABEL_HOST_MEDIA, MANAGED_LABEL, PROFILE_LABEL, unreadable, weight_of
from docker_xms.domain.watchdog import watchdog_text
from docker_xms.errors import BadInput, EngineUnavailable, XmsError
from docker_xms.settings import Settings
from docker_xms.usecases.adoption import Adopted, set_ephemeral
from docker_xms.usecases.boundaries import EngineApi
from docker_xms.usecases.host import HostOpener
from docker_xms.usecases.metrics import ReconcileStats, start_exporter
from docker_xms.usecases.reconcile import Reconciliation, reconcile
from docker_xms.usecases.rt import (
    RtHost,
    grow_parent,
    managed_running,
    raise_threads,
    reserve,
    start_stored,
    verify,
    watchdog_stops_in,
)

EVENTS = ("start", "die", "destroy", "update")
# Policies under which the engine itself would have (re)started the container when it came up.
RESTART_POLICIES = ("always", "unless-stopped", "on-failure")
DEBOUNCE_S = 0.05
# Short enough that an engine coming back is noticed well within the 2 s the budgets must be right in.
BACKOFF_S = (0.05, 0.1, 0.2, 0.4)
# How often the main loop looks at the stop flag: signal handlers only set a flag (see Agent.stop).
TICK_S = 0.2
# The first pause after a connection that got no reconcile through; it doubles each time, up to the interval.
FAILED_PASS_PAUSE_S = 0.2

Log = Callable[[str], None]


def change_lines(rt: RtHost, result: Reconciliation) -> list[str]:
    """One line per change a reconciliation made, in the order it made them."""
    balance = result.budgets
    lines = []
    for write in balance.writes:
        if write.target == budget.PARENT:
            lines.append(f"parent {rt.parent} {balance.parent_before} -> {write.value} us")
        elif write.target != budget.ARRIVING:
            name = balance.names.get(write.target, write.target[:12])
            lines.append(f"budget {name} {balance.before.get(write.target, 0)} -> {write.value} us")
    for cid, (before, after) in balance.cpu_changes.items():
        lines.append(f"cpus {balance.names.get(cid, cid[:12])} {before or 'all'} -> {after}")
    for adopted in result.adoption.adopted:
        media = adopted.labels.get(LABEL_HOST_MEDIA, "")
        lines.append(f"adopted {adopted.name} ({adopted.origin})" + (f": host media ports {media}" if media else ""))
    lines.extend(f"port plan given back by {cid[:12]}" for cid in result.adoption.released)
    lines.extend(result.cgroups)
    lines.extend(handed.line() for handed in result.handed)
    if result.rules is not None:
        short_names = {cid[:12]: name for cid, name in balance.names.items()}
        lines.extend(f"rules removed for {cid}" for cid in result.rules.removed)
        lines.extend(f"rules added for {short_names.get(cid, cid)}" for cid in result.rules.added)
    return lines


def raised_line(rt: RtHost, adopted: Adopted) -> str:
    """Its profile's real-time threads raised to SCHED_FIFO in a container adopted after it started, as a
    log line ("" when there was nothing to raise: they were real-time already, or it names none)."""
    try:
        profile = load_profile(adopted.labels.get(PROFILE_LABEL, ""), rt.settings.profile_dirs, installed_only=True)
    except XmsError:
        return ""  # an unknown profile is reported once already, with what it gets instead
    try:
        raised = raise_threads(rt, adopted.id, profile.rt_threads, profile.rt_priority)
    except (XmsError, OSError) as exc:
        return f"could not raise the real-time threads of {adopted.name}: {_reason(exc)}"
    if not raised:
        return ""
    return (
        f"raised {len(raised)} threads of {adopted.name} to SCHED_FIFO {profile.rt_priority} "
        f"({', '.join(sorted(set(raised)))}): it started before it had a budget"
    )


def verified_line(rt: RtHost, container_id: str, name: str) -> str:
    """Whether SCHED_FIFO works in an adopted container (its budget was just written), as a log line."""
    try:
        proof = verify(rt, container_id)
    except (XmsError, OSError) as exc:
        return f"could not verify SCHED_FIFO in {name}: {_reason(exc)}"
    if proof.fifo_allowed:
        return f"SCHED_FIFO works in {name} (budget {proof.budget_us} us)"
    return f"SCHED_FIFO refused in {name}: {proof.fifo_detail}"


@dataclass(frozen=True)
class _Broken:
    reason: str


class Agent:
    """The long-running loop; `stop()` may be called from a signal handler."""

    def __init__(
        self,
        log: Log,
        opener: HostOpener,
        interval: float = 30.0,
        debounce: float = DEBOUNCE_S,
        stats: ReconcileStats | None = None,
        linger_s: float = 0.0,
    ) -> None:
        self.log = log
        # After the first stop(), keep reconciling for up to this long while managed containers still run:
        # a node being drained stops its agent together with its media servers, which drain for a while;
        # an agent that left at once would leave the rules of those that stop after it.
        self.linger_s = linger_s
        self._stop_asked_at: float | None = None
        # Counted for the agent's metrics (reconciliations done and failed, the time of the last one).
        self.stats = stats or ReconcileStats()
        self.interval = interval
        self.debounce = debounce
        self.connect = opener.connect
        self._open_host = opener.open
        self.netfilter = opener.netfilter
        self._netfilter_on = opener.netfilter_on
        self._bridge = DEFAULT_BRIDGES[DOCKER]
        self._stopping = False
        # Start failures already retried once, so a container that cannot start is not retried forever.
        self._retried: set[tuple[str, str, str]] = set()
        # When a reconcile last went through: a connection that never gets one is not retried at once.
        self._reconciled_at = 0.0
        # The last watchdog stop logged per container (epoch seconds).
        self._watchdog_seen: dict[str, float] = {}
        # Containers left alone because their labels cannot be read, as last logged.
        self._skipped: set[str] = set()

    def stop(self) -> None:
        # Only flags: taking a lock (a queue's, an Event's) inside a signal handler can deadlock the
        # thread it interrupted, which may hold that very lock. A second stop() ends a lingering agent.
        if self.linger_s > 0 and self._stop_asked_at is None:
            self._stop_asked_at = time.monotonic()
            return
        self._stopping = True

    def _linger_over(self, rt: RtHost) -> bool:
        """With linger: stop() was called and no managed container runs any more, or the time is up."""
        if self._stop_asked_at is None:
            return False
        if time.monotonic() - self._stop_asked_at >= self.linger_s:
            self.log(f"stopping after lingering {self.linger_s:g} s with managed containers still running")
            return True
        return not managed_running(rt.engine)

    # --- one pass ---------------------------------------------------------------------------------

    def open_host(self, engine: EngineApi) -> RtHost:
        """The host on this connection; the netfilter follows its engine's bridge (Podman's is not docker0)."""
        rt = self._open_host(engine)
        if self._netfilter_on is not None and rt.bridge != self._bridge:
            self.netfilter = self._netfilter_on(rt.bridge)
            self._bridge = rt.bridge
        return rt

    def once(self) -> None:
        engine = self.connect()
        try:
            rt = self.open_host(engine)
            self._grow_parent(rt)
            self.reconcile(rt)
            self._log_watchdog_stops(rt)
        finally:
            engine.close()

    def reconcile(self, rt: RtHost) -> None:
        """Reconcile, then start managed containers whose start by the engine failed, now that there is room."""
        result = reconcile(rt, self.netfilter)
        for line in change_lines(rt, result):
            self.log(line)
        self._log_skipped(
            [s.sentence() for s in result.budgets.skipped] + [r.sentence() for r in result.adoption.refused]
        )
        for adopted in result.adoption.adopted:
            for said in (
                set_ephemeral(rt.engine, adopted),
                raised_line(rt, adopted),
                verified_line(rt, adopted.id, adopted.name),
            ):
                if said:
                    self.log(said)
        if self._restart_failed(rt):
            for line in change_lines(rt, reconcile(rt, self.netfilter)):
                self.log(line)

    def _log_watchdog_stops(self, rt: RtHost) -> None:
        """Each time the runaway watchdog stopped a process in a managed container, once (what systemd inside
        logged; the kill happens between engine events). A container the engine cannot say more of is skipped."""
        for summary in managed_running(rt.engine):
            try:
                info = rt.engine.find_container(summary.id)
            except EngineUnavailable:
                raise
            except XmsError:
                continue
            if info is None:
                continue
            seen = self._watchdog_seen.get(info.id, 0.0)
            fresh = [stop for stop in watchdog_stops_in(rt, info, seen) if stop.at > seen]
            for stop in fresh:
                self.log(
                    f"watchdog stopped {stop.unit} in {info.name} (SIGXCPU: a real-time thread ran "
                    f"{watchdog_text(info.rttime_us)} without blocking)"
                )
            if fresh:
                self._watchdog_seen[info.id] = fresh[-1].at

    def _log_skipped(self, sentences: list[str]) -> None:
        # Once each: labels cannot change, and the same container would be reported on every reconcile.
        for line in sorted(set(sentences) - self._skipped):
            self.log(line)
        self._skipped = set(sentences)

    def _grow_parent(self, rt: RtHost) -> None:
        try:
            grown = grow_parent(rt)
        except (XmsError, OSError) as exc:
            self.log(f"could not raise parent {rt.parent}: {_reason(exc)}")
            return
        if grown is not None:
            self.log(f"parent {rt.parent} {grown[0]} -> {grown[1]} us")

    def _restart_failed(self, rt: RtHost) -> bool:
        engine = rt.engine
        started = False
        for summary in engine.list_containers(all=True, label=f"{MANAGED_LABEL}=true"):
            if summary.state not in ("exited", "created"):
                continue
            cid = summary.id
            # Inspected, as only the inspect view has them: State.Error tells a failed start from a
            # container someone stopped on purpose, and the restart policy whether the engine would start it.
            info = engine.find_container(cid)
            if info is None or info.restart_policy not in RESTART_POLICIES or not info.error or info.running:
                continue
            error = info.error
            key = (cid, error, info.finished_at)
            if key in self._retried:
                continue
            self._retried.add(key)
            name = info.name or cid[:12]
            reason = unreadable(info.labels)
            if reason is not None:
                self.log(f"not starting {name} again: {reason}")
                continue
            weight = weight_of(info.labels)
            self.log(f"starting {name} again: the engine could not start it ({_first_line(error)})")

            try:
                with reserve(rt, weight) as share:
                    start_stored(engine, cid, share.arriving_us, share.arriving_cpus)
            except EngineUnavailable:
                # Not tried after all: the engine went away in the middle; try again when it is back.
                self._retried.discard(key)
                raise
            except XmsError as exc:
                self.log(f"could not start {name}: {exc.message}")
                continue
            self.log(f"started {name}")
            started = True
        return started

    # --- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Until stop(): connect, reconcile, follow events; on a broken stream, reconnect and start over.

        Only stop() or settings that cannot work (BadInput) end it: the engine going away at any point,
        or any one pass failing, is waited out and followed by a fresh start.
        """
        rt: RtHost | None = None
        lost_at: float | None = None
        failures = 0
        while not self._stopping:
            engine = self._connect_with_backoff(rt)
            if engine is None:
                return
            if lost_at is not None:
                self.log(f"engine back after {time.monotonic() - lost_at:.1f} s")
            started = time.monotonic()
            lost = True
            try:
                rt = self.open_host(engine)
                reason = self._follow(rt)
            except EngineUnavailable as exc:
                reason = exc.message
            except BadInput:
                raise
            except Exception as exc:  # the agent outlives any one failed pass; it starts over after a pause
                reason, lost = _reason(exc), False
            finally:
                engine.close()
            if reason is None:
                return
            lost_at = time.monotonic()
            self.log(
                f"engine connection lost ({reason}); reconnecting" if lost else f"failed ({reason}); starting over"
            )
            # An engine that answers a ping but fails every pass would otherwise be asked again at once,
            # forever: after passes that never got a reconcile through, pause longer each time.
            failures = 0 if self._reconciled_at >= started else failures + 1
            if failures:
                self._sleep(min(FAILED_PASS_PAUSE_S * 2 ** (failures - 1), self.interval))

    def _connect_with_backoff(self, rt: RtHost | None) -> Engine | None:
        attempt = 0
        said = False
        # Lingering waits for containers to stop; with the engine away there are none to wait for.
        while not self._stopping and not (attempt and self._stop_asked_at is not None):
            try:
                return self.connect()
            except EngineUnavailable as exc:
                if not said:
                    self.log(f"waiting for the Docker engine: {exc.message}")
                    said = True
            # While the engine is away its containers are too; after a reboot the parent holds 0 and
            # the engine's restarts would fail, so the parent is made right before the engine is back.
            if rt is not None:
                self._grow_parent(rt)
            self._sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1
        return None

    def _follow(self, rt: RtHost) -> str | None:
        """Reconcile on events until stopped (None) or the stream breaks (the reason)."""
        events: queue.Queue[dict[str, Any] | _Broken] = queue.Queue()
        # Subscribed before the first reconcile, so nothing that happens during it is missed.
        self._listen(events)
        self._grow_parent(rt)
        next_at = self._reconcile_logged(rt)
        lingering = False
        while not self._stopping:
            if self._stop_asked_at is not None and not lingering:
                lingering = True
                self.log(f"stopping once no managed container runs (at most {self.linger_s:g} s)")
                # What stopped before the signal is done with at once.
                next_at = self._reconcile_logged(rt)
            if lingering and self._linger_over(rt):
                # The last ones may have stopped after the pass that followed their event: one more.
                self._reconcile_logged(rt)
                return None
            wait = max(0.0, min(TICK_S, next_at - time.monotonic()))
            try:
                item = events.get(timeout=wait)
            except queue.Empty:
                if time.monotonic() >= next_at:
                    next_at = self._reconcile_logged(rt)
                    # Only in the periodic pass: a watchdog stop happens inside a container, with no event.
                    self._log_watchdog_stops(rt)
                continue
            if isinstance(item, _Broken):
                return item.reason
            broken = self._coalesce(events)
            next_at = self._reconcile_logged(rt)
            if broken is not None:
                return broken.reason
        return None

    def _coalesce(self, events: queue.Queue[dict[str, Any] | _Broken]) -> _Broken | None:
        """Take the rest of a burst: whatever arrives within `debounce` of its first event."""
        deadline = time.monotonic() + self.debounce
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                item = events.get(timeout=left)
            except queue.Empty:
                return None
            if isinstance(item, _Broken):
                return item

    def _reconcile_logged(self, rt: RtHost) -> float:
        """Reconcile; returns when the next periodic pass is due (sooner after a failure)."""
        try:
            self.reconcile(rt)
        except EngineUnavailable:
            self.stats.failed()
            raise
        except Exception as exc:  # a failed pass is retried soon; it must not end the agent
            self.stats.failed()
            self.log(f"reconcile failed: {_reason(exc)}")
            return time.monotonic() + min(self.interval, 1.0)
        self.stats.done()
        self._reconciled_at = time.monotonic()
        return self._reconciled_at + self.interval

    def _listen(self, events: queue.Queue[dict[str, Any] | _Broken]) -> None:
        # Its own connection: the SDK's HTTP session is not shared between threads.
        stream_engine = self.connect()
        stream = stream_engine.events(filters={"type": ["container"], "event": list(EVENTS)})

        def pump(stream: Iterator[dict[str, Any]] = stream) -> None:
            reason = "the engine closed its event stream"
            try:
                for event in stream:
                    events.put(event)
            except XmsError as exc:
                reason = exc.message
            except Exception as exc:  # any failure of the stream means: reconnect
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                stream_engine.close()
            events.put(_Broken(reason))

        # A daemon thread: it may sit blocked on the stream when the agent exits.
        threading.Thread(target=pump, name="engine-events", daemon=True).start()

    def wait_for_stop(self) -> None:
        """Do nothing until stop(): for an agent that only serves metrics."""
        while not self._stopping:
            time.sleep(TICK_S)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, TICK_S))


def _reason(exc: BaseException) -> str:
    """The project's sentence, or the type and text of anything else (a fault to report, not hide)."""
    return exc.message if isinstance(exc, XmsError) else f"{type(exc).__name__}: {exc}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else text


# --- the agent's process --------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentRequest:
    """What `docker-xms agent` was asked; a combination that could not work is refused when it is made."""

    interval: float = 30.0
    once: bool = False
    cpu_latency_us: int | None = None
    metrics: str | None = None
    probe_every: float | None = None
    linger: float = 0.0
    no_reconcile: bool = False

    def __post_init__(self) -> None:
        if self.once and self.cpu_latency_us is not None:
            raise BadInput("--cpu-latency-us holds a limit while the agent runs; with --once it would do nothing.")
        if self.once and self.metrics is not None:
            raise BadInput("--metrics serves while the agent runs; with --once it would serve nothing.")
        if self.probe_every is not None and self.metrics is None:
            raise BadInput("--probe-every serves its histograms with the metrics: give it with --metrics.")
        if self.no_reconcile and (self.metrics is None or self.once):
            raise BadInput("--no-reconcile leaves only the metrics to serve: give it with --metrics, without --once.")


def run_agent(settings: Settings, request: AgentRequest, log: Log, opener: HostOpener) -> None:
    """Reconcile once, or run the agent until SIGTERM or SIGINT: its metrics, its lock, its CPU latency hold."""
    runner = Agent(log, opener, interval=request.interval, linger_s=request.linger)
    if request.once:
        runner.once()
        return
    stop_metrics = None
    if request.metrics is not None:
        # Refused (exit 2) before the agent starts when the address is taken or malformed.
        stop_metrics = start_exporter(
            settings,
            opener.netfilter,
            request.metrics,
            None if request.no_reconcile else runner.stats,
            log,
            probe_every_s=request.probe_every,
        )
    signals.call_on_stop(runner.stop)
    # Held until the process ends: `run` looks at it to know whether an agent runs on this host.
    lock = settings.agent_lock
    # An exporter only is no agent for `run` to rely on: it leaves the lock to one that reconciles.
    held = request.no_reconcile or hostlock.try_hold(lock) is not None
    hold: AbstractContextManager[object] = (
        CpuLatencyHold(request.cpu_latency_us) if request.cpu_latency_us is not None else nullcontext()
    )
    with hold:
        for line in _started_lines(request, held, lock):
            log(line)
        if request.no_reconcile:
            runner.wait_for_stop()
        else:
            runner.run()
    if stop_metrics is not None:
        stop_metrics()
    log("agent stopped")


def _started_lines(request: AgentRequest, held: bool, lock: Path) -> list[str]:
    if request.no_reconcile:
        lines = ["agent started (metrics only: not reconciling)"]
    else:
        lines = [f"agent started (reconciling every {request.interval:g} s and on container events)"]
    if request.metrics is not None:
        lines.append(f"serving metrics on {request.metrics} at /metrics")
    if request.probe_every is not None:
        lines.append(f"probing wake-ups in each managed container every {request.probe_every:g} s")
    if not held:
        # Two agents do no harm (both reconcile under the host lock); this one only does not hold it.
        lines.append(f"another docker-xms agent (pid {hostlock.holder(lock)}) holds {lock}; this one reconciles too")
    if request.cpu_latency_us is not None:
        lines.append(f"holding the CPU wake-up latency limit at {request.cpu_latency_us} us")
    return lines
