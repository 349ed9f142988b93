"""The agent's /metrics endpoint: prometheus-client's exposition with one collector that computes on scrape.

The only module that imports prometheus_client. The collector keeps no series of its own: each scrape asks
for the families afresh, so the series of a container that is gone are simply absent from the next answer.

The HTTP server is the standard library's, bounded (prometheus-client's own starts a thread for every
connection, with no limit and no timeout): at most SLOTS requests at once, each dropped when its client
sends nothing for TIMEOUT_S; a connection beyond the slots is answered 503 at once and closed.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from docker_xms.domain.metrics import Family
from docker_xms.errors import BadInput, XmsError

# Scrapes within this many seconds of a computation get its figures: each computation lists the engine's
# containers and runs `iptables -S`, and the server answers each scrape on a thread of its own.
FRESH_S = 1.0


class _OnScrape(Collector):
    def __init__(self, families: Callable[[], Iterable[Family]], on_error: Callable[[str], None]) -> None:
        self.families = families
        self.on_error = on_error
        # One computation at a time, whatever the number of scrapers: the others wait and share its result.
        self._lock = threading.Lock()
        self._last: tuple[float, list[Family]] | None = None

    def _computed(self) -> list[Family]:
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < FRESH_S:
                return self._last[1]
            try:
                found = list(self.families())
            except Exception as exc:  # a failed scrape must not end the agent; it says why and serves what it can
                self.on_error(exc.message if isinstance(exc, XmsError) else f"{type(exc).__name__}: {exc}")
                found = []
            self._last = (time.monotonic(), found)
            return found

    def collect(self) -> Iterator[Metric]:
        for family in self._computed():
            metric: GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily
            if family.kind == "histogram":
                metric = HistogramMetricFamily(family.name, family.help, labels=family.labels)
                for labels, buckets, total in family.histograms:
                    metric.add_metric(list(labels), [(le, float(count)) for le, count in buckets], total)
                yield metric
                continue
            if family.kind == "counter":
                metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
            else:
                metric = GaugeMetricFamily(family.name, family.help, labels=family.labels)
            for labels, value in family.samples:
                metric.add_metric(list(labels), value)
            yield metric

    def describe(self) -> Iterable[Metric]:
        # Nothing at registration: describing would compute the figures once, before the agent is up.
        return ()


SLOTS = 4
TIMEOUT_S = 5.0
STOP_POLL_S = 0.1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, slots: int, timeout_s: float) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.registry = registry
        self._slots = threading.BoundedSemaphore(slots)
        # The socket timeout of each request: a client that sends nothing for that long is dropped.
        super().__init__(address, type("Handler", (_Handler,), {"timeout": timeout_s}))

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/", "/metrics"):
            self.send_error(404)
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve(
    address: str,
    port: int,
    families: Callable[[], Iterable[Family]],
    on_error: Callable[[str], None],
    slots: int = SLOTS,
    timeout_s: float = TIMEOUT_S,
) -> Callable[[], None]:
    """Serve /metrics on address:port in a daemon thread; returns a function that stops the server."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OnScrape(families, on_error))
    try:
        server = _Server((address, port), registry, slots, timeout_s)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise BadInput(f"Cannot serve metrics on {address}:{port}: {exc.strerror}.") from None
        raise XmsError(f"Cannot serve metrics on {address}:{port}: {exc.strerror or exc}.") from None
    # Polled for a stop every 0.1 s (the library's 0.5 s would hold an agent's exit that long).
    threading.Thread(target=server.serve_forever, args=(STOP_POLL_S,), name="metrics-server", daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
