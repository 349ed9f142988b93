"""The metric families and the listen address, from plain values."""

from __future__ import annotations

import pytest

from docker_xms.domain.metrics import (
    ContainerFigures,
    HostFigures,
    ReconcileCounts,
    WakeupHistogram,
    count_policies,
    families,
    listen_address,
    origin_labels,
)
from docker_xms.errors import BadInput


def container(name: str = "media1", **overrides: object) -> ContainerFigures:
    values: dict[str, object] = {
        "id": "0123456789abcdef",
        "name": name,
        "profile": "rtpengine",
        "mode": "container",
        "origin": origin_labels({"com.docker.swarm.service.name": "media", "com.docker.swarm.task.name": "media.1.x"}),
        "budget_us": 475_000,
        "share": 0.5,
        "rt_threads": 16,
        "other_threads": 8,
        "ready": True,
        "advertise": "192.0.2.10",
        "media_ports": 10,
        "forward_rules": 1,
        "forwarded_ports": 10,
    }
    values.update(overrides)
    return ContainerFigures(**values)  # type: ignore[arg-type]


def host(*containers: ContainerFigures, **overrides: object) -> HostFigures:
    values: dict[str, object] = {
        "mode": "per-group",
        "pool_us": 950_000,
        "parent_us": 950_000,
        "steal_seconds": 3.5,
        "cpu_latency_limit_us": None,
        "containers": containers,
        "reconciles": ReconcileCounts(4, 1, 1_700_000_000.0),
    }
    values.update(overrides)
    return HostFigures(**values)  # type: ignore[arg-type]


def samples(figures: HostFigures) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        f.name: [(dict(zip(f.labels, labels, strict=True)), value) for labels, value in f.samples]
        for f in families(figures)
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [("9108", ("127.0.0.1", 9108)), ("0.0.0.0:9108", ("0.0.0.0", 9108)), ("[::1]:9108", ("::1", 9108))],
)
def test_a_bare_port_listens_on_loopback_only(text: str, expected: tuple[str, int]) -> None:
    assert listen_address(text) == expected


@pytest.mark.parametrize("text", ["", "x", "0", "70000", ":9108", "host:"])
def test_a_malformed_listen_address_is_refused(text: str) -> None:
    with pytest.raises(BadInput, match="is not PORT or ADDRESS:PORT"):
        listen_address(text)


def test_budgets_are_seconds_per_period_with_the_container_and_origin_labels() -> None:
    got = samples(host(container()))
    [(labels, value)] = got["docker_xms_container_rt_budget_seconds"]
    assert value == 0.475
    assert labels == {
        "name": "media1",
        "id": "0123456789ab",
        "profile": "rtpengine",
        "mode": "container",
        "swarm_service": "media",
        "swarm_task": "media.1.x",
        "compose_project": "",
    }
    assert [(lab["policy"], v) for lab, v in got["docker_xms_container_threads"]] == [("realtime", 16), ("other", 8)]
    assert got["docker_xms_container_advertise_info"][0][0]["address"] == "192.0.2.10"


def test_a_host_without_budgets_exports_no_budget_series() -> None:
    got = samples(host(container(budget_us=None, share=None), mode="global", pool_us=None, parent_us=None))
    assert got["docker_xms_container_rt_budget_seconds"] == []
    assert "docker_xms_host_rt_pool_seconds" not in got
    assert {lab["mode"]: v for lab, v in got["docker_xms_host_rt_mode"]} == {
        "per-group": 0,
        "global": 1,
        "none": 0,
        "cpus": 0,
    }


def test_rules_are_left_out_when_netfilter_could_not_be_read() -> None:
    got = samples(host(container(forward_rules=None, forwarded_ports=None)))
    assert got["docker_xms_container_forward_rules"] == []
    assert got["docker_xms_container_media_ports"][0][1] == 10


def test_host_and_agent_figures() -> None:
    got = samples(host(cpu_latency_limit_us=0))
    assert got["docker_xms_host_cpu_latency_limit_seconds"] == [({}, 0.0)]
    assert got["docker_xms_reconciliations"] == [({}, 4)]
    assert got["docker_xms_reconciliation_failures"] == [({}, 1)]
    assert got["docker_xms_managed_containers"] == [({}, 0)]
    kinds = {f.name: f.kind for f in families(host())}
    assert kinds["docker_xms_host_steal_seconds"] == "counter"


def test_thread_policies_are_counted_as_realtime_or_other() -> None:
    assert count_policies(["SCHED_FIFO", "SCHED_RR", "SCHED_OTHER", "SCHED_BATCH"]) == (2, 2)


def test_wakeup_histogram_buckets_are_cumulative_and_end_with_every_sample() -> None:
    histogram = WakeupHistogram().add([5.0, 10.0, 15.0, 700.0, 80_000.0]).add([-3.0])
    buckets = dict(histogram.cumulative())
    # 10 us is its own bucket's upper bound (le means "at or under"); a negative lateness counts as 0.
    assert buckets["1e-05"] == 3
    assert buckets["2e-05"] == 4
    assert buckets["0.0005"] == 4
    assert buckets["0.001"] == 5
    assert buckets["0.05"] == 5
    assert buckets["+Inf"] == 6
    assert histogram.sum_s == pytest.approx((5 + 10 + 15 + 700 + 80_000) / 1e6)


def test_the_wakeup_family_has_series_only_for_running_containers_with_a_histogram() -> None:
    probed = container("media1")
    figures = host(
        probed, container("media2", id="fedcba9876543210"), wakeups={probed.id: WakeupHistogram().add([30.0])}
    )
    [family] = [f for f in families(figures) if f.name == "docker_xms_container_wakeup_latency_seconds"]
    assert family.kind == "histogram"
    assert [dict(zip(family.labels, labels, strict=True))["name"] for labels, _, _ in family.histograms] == ["media1"]
    assert not [f for f in families(host(probed)) if f.name == "docker_xms_container_wakeup_latency_seconds"]


def test_the_watchdog_and_the_hosts_guard_are_exported_where_read() -> None:
    got = samples(host(container(watchdog_us=500_000), container("media2", id="f" * 16, watchdog_us=0)))
    assert [value for _, value in got["docker_xms_container_watchdog_seconds"]] == [0.5, 0.0]
    # Not readable (the process went while we looked): no series rather than a false 0.
    assert samples(host(container()))["docker_xms_container_watchdog_seconds"] == []
    # The kernel's admission bound and the fair server's reserve, only where they were read.
    assert "docker_xms_host_rt_runtime_seconds" not in got
    assert "docker_xms_host_fair_server_runtime_seconds" not in got
    guarded = samples(host(rt_runtime_us=950_000, fair_server_ns={0: 50_000_000, 1: 50_000_000}))
    assert guarded["docker_xms_host_rt_runtime_seconds"] == [({}, 0.95)]
    assert guarded["docker_xms_host_fair_server_runtime_seconds"] == [({"cpu": "0"}, 0.05), ({"cpu": "1"}, 0.05)]
    assert samples(host(rt_runtime_us=-1))["docker_xms_host_rt_runtime_seconds"] == [({}, -1.0)]
