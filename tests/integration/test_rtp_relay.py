"""RTP end to end: a paced sender, a relay, a timestamping receiver; then the same through rtpengine via ng."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from lab.rtpstats import stream_stats

from docker_xms.adapters.rtp import (
    NgClient,
    NgError,
    RtpReceiver,
    exchange,
    local_address_towards,
    open_call,
    send_stream,
    udp_socket,
)
from docker_xms.domain.stats import percentiles
from tests.helpers import RTPENGINE_IMAGE, systemd_run_kwargs, wait_for

pytestmark = pytest.mark.engine

PACKETS = 150  # 3 s of 20 ms packets


class LoopbackRelay:
    """A stand-in for a media relay on 127.0.0.1: forwards each datagram, holding back some for a while."""

    def __init__(self, target: tuple[str, int], hold_every: int = 0, hold_ms: float = 0.0) -> None:
        self.sock = udp_socket("127.0.0.1")
        self.address = self.sock.getsockname()
        self.target = target
        self.hold_every = hold_every
        self.hold_ms = hold_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        count = 0
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            count += 1
            if self.hold_every and count % self.hold_every == 0:
                timer = threading.Timer(self.hold_ms / 1000, self.sock.sendto, (data, self.target))
                timer.start()
            else:
                self.sock.sendto(data, self.target)

    def __enter__(self) -> LoopbackRelay:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_paced_stream_through_a_loopback_relay() -> None:
    with udp_socket() as rx, udp_socket() as tx, LoopbackRelay(rx.getsockname()) as relay:
        with RtpReceiver(rx) as receiver:
            report = send_stream(tx, relay.address, PACKETS, ssrc=0xC0FFEE, first_seq=65500)
            assert receiver.wait_for(PACKETS, timeout=2)
        stats = stream_stats(receiver.arrivals, origin=report.origin, sent=report.sent)
    send_late = percentiles(v / 1000 for v in report.send_lateness_ns)
    delay = stats.delay_percentiles()
    print(f"\nloopback: send lateness us {send_late}; delay ms {delay}; jitter {stats.jitter_ms:.3f} ms")
    assert (stats.received, stats.lost, stats.duplicates, stats.reordered) == (PACKETS, 0, 0, 0)
    assert receiver.sources == {relay.address}
    assert stats.late == 0
    # The host adds far less than a packet time; 5 ms leaves room for a loaded 2-core machine.
    assert stats.jitter_ms < 5
    assert send_late.p50 < 1000


def test_held_packets_are_late_and_raise_jitter() -> None:
    with udp_socket() as rx, udp_socket() as tx, LoopbackRelay(rx.getsockname(), hold_every=10, hold_ms=60) as relay:
        with RtpReceiver(rx) as receiver:
            report = send_stream(tx, relay.address, 100)
            assert receiver.wait_for(100, timeout=2)
        stats = stream_stats(receiver.arrivals, origin=report.origin, late_after_ms=40, sent=report.sent)
    print(f"\nheld: late {stats.late}, reordered {stats.reordered}, jitter {stats.jitter_ms:.2f} ms")
    assert stats.lost == 0
    assert stats.late == 10
    # Each held packet arrives after the packets sent behind it; the last one has none behind it.
    assert stats.reordered == 9
    assert stats.jitter_ms > 5


def test_ng_client_matches_cookies_and_times_out() -> None:
    with udp_socket() as server:
        stop = threading.Event()

        def answer_with_a_stale_reply_first() -> None:
            server.settimeout(0.05)
            while not stop.is_set():
                try:
                    data, peer = server.recvfrom(2048)
                except TimeoutError:
                    continue
                cookie = data.split(b" ", 1)[0]
                server.sendto(b"stale d6:result5:errore", peer)
                server.sendto(cookie + b" d6:result4:ponge", peer)

        thread = threading.Thread(target=answer_with_a_stale_reply_first, daemon=True)
        thread.start()
        try:
            host, port = server.getsockname()
            with NgClient(host, port, timeout=0.5) as ng:
                assert ng.ping()
        finally:
            stop.set()
            thread.join(2)

    with udp_socket() as silent, NgClient("127.0.0.1", silent.getsockname()[1], timeout=0.1, attempts=2) as ng:
        start = time.monotonic()
        with pytest.raises(NgError, match="did not answer the ng ping"):
            ng.ping()
        assert time.monotonic() - start < 1


# --- through rtpengine -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rtpengine(docker_client: Any) -> Iterator[str]:
    """A running demo container, without a real-time budget; yields its address."""
    try:
        docker_client.images.get(RTPENGINE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"image {RTPENGINE_IMAGE} is not built yet (docker-xms build --profile rtpengine)")
    container = docker_client.containers.run(RTPENGINE_IMAGE, **systemd_run_kwargs("media"))
    try:
        container.reload()
        address = container.attrs["NetworkSettings"]["IPAddress"]

        def pong() -> bool:
            try:
                with NgClient(address, timeout=0.3, attempts=1) as ng:
                    return ng.ping()
            except NgError:
                return False

        wait_for(pong, timeout=60, what="rtpengine to answer ng ping")
        yield address
    finally:
        container.remove(force=True)


@pytest.mark.engine
@pytest.mark.slow
def test_two_legs_relayed_by_rtpengine(rtpengine: str) -> None:
    local = local_address_towards(rtpengine)
    with udp_socket(local) as leg_a, udp_socket(local) as leg_b, NgClient(rtpengine) as ng:
        call = open_call(ng, leg_a, leg_b)
        a_sends_to, b_sends_to = call.a_sends_to, call.b_sends_to
        assert b_sends_to[0] == a_sends_to[0] == rtpengine
        assert b_sends_to[1] != a_sends_to[1]
        assert 30000 <= min(b_sends_to[1], a_sends_to[1]) <= max(b_sends_to[1], a_sends_to[1]) <= 39999
        done = exchange(leg_a, leg_b, a_sends_to, b_sends_to, PACKETS)
        to_b = stream_stats(done.at_b, origin=done.sent_by_a.origin, sent=PACKETS)
        to_a = stream_stats(done.at_a, origin=done.sent_by_b.origin, sent=PACKETS)
        deleted = ng.delete(call.call_id, call.from_tag)
    for name, stats in (("A->B", to_b), ("B->A", to_a)):
        delay = stats.delay_percentiles()
        print(
            f"\nrtpengine {name}: received {stats.received}/{stats.expected}, jitter {stats.jitter_ms:.3f} ms, "
            f"one-way delay ms p50 {delay.p50:.3f} p99 {delay.p99:.3f} max {delay.max:.3f}"
        )
        assert stats.lost <= PACKETS // 100, name
        assert stats.duplicates == 0, name
        assert stats.jitter_ms < 10, name
    # What comes back comes from rtpengine's media ports, and it is the other leg's stream.
    assert done.sources_at_a == {a_sends_to}
    assert done.sources_at_b == {b_sends_to}
    assert {a.timestamp for a in done.at_b} <= {
        (done.sent_by_a.first_timestamp + 160 * i) % (1 << 32) for i in range(PACKETS)
    }
    totals = deleted.body["totals"]
    assert isinstance(totals, dict)
    rtp = totals["RTP"]
    assert isinstance(rtp, dict)
    assert isinstance(rtp["packets"], int)
    assert rtp["packets"] >= 2 * PACKETS - 2


@pytest.mark.engine
def test_rtpengine_refusal_is_one_sentence(rtpengine: str) -> None:
    with NgClient(rtpengine) as ng:
        with pytest.raises(NgError, match=r"^rtpengine at .* refused the ng query: Unknown call-id\.$"):
            ng.query("no-such-call")
        # Deleting is idempotent: an unknown call is a warning, not an error.
        assert "warning" in ng.delete("no-such-call", "nobody").body
