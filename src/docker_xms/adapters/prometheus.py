"""The agent's /metrics endpoint: prometheus-client's HTTP server with one collector that computes on scrape.

The only module that imports prometheus_client. The collector keeps no series of its own: each scrape asks
for the families afresh, so the series of a container that is gone are simply absent from the next answer.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
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


def serve(
    address: str, port: int, families: Callable[[], Iterable[Family]], on_error: Callable[[str], None]
) -> Callable[[], None]:
    """Serve /metrics on address:port in a daemon thread; returns a function that stops the server."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OnScrape(families, on_error))
    try:
        started: Any = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise BadInput(f"Cannot serve metrics on {address}:{port}: {exc.strerror}.") from None
        raise XmsError(f"Cannot serve metrics on {address}:{port}: {exc.strerror or exc}.") from None
    server = started[0] if isinstance(started, tuple) else None

    def stop() -> None:
        if server is not None:
            server.shutdown()
            server.server_close()

    return stop
