"""The agent's metrics scraped by a real Prometheus server (Debian's `prometheus`) that the test starts on
127.0.0.1 with its own configuration and storage, scraping and evaluating every second.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.helpers import LoggedAgent, agent_for_a_test, free_port, run_cli, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PREFIX = "metrics-test-"
PARENT = Path("/sys/fs/cgroup/cpu/docker")
ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


class Prometheus:
    def __init__(self, tmp: Path, target: str, rules: Path | None) -> None:
        if shutil.which("prometheus") is None:
            pytest.fail("these tests need Debian's prometheus package (scripts/quickstart.sh test installs it)")
        self.port = free_port()
        config = tmp / "prometheus.yml"
        rule_files = f"rule_files: [{json.dumps(str(rules))}]\n" if rules else ""
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            + rule_files
            + f"scrape_configs:\n  - job_name: docker-xms\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log = (tmp / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, 30, what="prometheus to be ready")

    def _ready(self) -> bool:
        with contextlib.suppress(OSError):
            return "Ready" in get(f"http://127.0.0.1:{self.port}/-/ready")
        return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = json.loads(get(url))
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def firing(self, alert: str, name: str) -> bool:
        return bool(self.query(f'ALERTS{{alertname="{alert}",alertstate="firing",name="{name}"}}'))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def cleanup(docker_client: Any) -> Iterator[None]:
    yield
    for container in docker_client.containers.list(all=True, filters={"name": PREFIX}):
        if container.name.startswith(PREFIX):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
    run_cli("rt", "rebalance", "--json")


def metrics_agent(tmp: Path, port: int, *extra: str) -> LoggedAgent:
    argv = [sys.executable, "-m", "docker_xms", "agent", "--interval", "5", "--metrics", str(port), *extra]
    # Its own agent lock: an agent of the host (or of another test) may hold the usual one.
    return LoggedAgent(argv, {**os.environ, "DOCKER_XMS_AGENT_LOCK": str(tmp / "agent.lock")})


def start(name: str) -> str:
    result = run_cli("run", "-c", "--no-wait", "--json", "--name", name, "--media-ports", "10", timeout=120)
    assert result.code == 0, result.err
    return str(json.loads(result.out)["id"])


def kernel_budget(container_id: str) -> int:
    return int((PARENT / container_id / "cpu.rt_runtime_us").read_text())


def test_prometheus_holds_the_kernels_budgets_and_a_removed_containers_series_go_stale(
    rtpengine_image: str, cleanup: None, tmp_path: Path
) -> None:
    port = free_port()
    with agent_for_a_test(metrics_agent(tmp_path, port, "--probe-every", "1")):
        server = Prometheus(tmp_path, f"127.0.0.1:{port}", None)
        try:
            ids = {name: start(name) for name in (PREFIX + "a", PREFIX + "b")}

            def budgets_match() -> bool:
                found = {
                    s["metric"]["name"]: round(float(s["value"][1]) * 1_000_000)
                    for s in server.query(f'docker_xms_container_rt_budget_seconds{{name=~"{PREFIX}.*"}}')
                }
                kernel = {name: kernel_budget(cid) for name, cid in ids.items()}
                return found == kernel and all(v > 0 for v in kernel.values())

            wait_for(budgets_match, 30, what="Prometheus to hold the budgets the cgroup files hold")
            assert server.query(f'docker_xms_container_threads{{name="{PREFIX}a",policy="realtime"}}')

            # The scheduled probes: 500 wake-ups at 1 ms in each container per round, each one counted.
            def probed(name: str) -> bool:
                counts = server.query(f'docker_xms_container_wakeup_latency_seconds_count{{name="{name}"}}')
                total = server.query(f'docker_xms_container_wakeup_latency_seconds_bucket{{name="{name}",le="+Inf"}}')
                return (
                    bool(counts and total)
                    and float(counts[0]["value"][1]) >= 500
                    and (counts[0]["value"][1] == total[0]["value"][1])
                )

            for name in ids:
                wait_for(lambda name=name: probed(name), 30, what=f"a wake-up histogram of {name}")
            # `top` shows the same figures from the same use case: each container with the budget its cgroup holds.
            frame = run_cli("top", "--once")
            assert frame.code == 0, frame.err
            for name, cid in ids.items():
                row = next(line for line in frame.out.splitlines() if name in line)
                assert f"{kernel_budget(cid):,}" in row

            text = get(f"http://127.0.0.1:{port}/metrics")
            checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            rules = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
            assert rules.returncode == 0, rules.stdout + rules.stderr

            assert run_cli("rm", "-f", PREFIX + "a", timeout=120).code == 0
            # The scrape no longer has its series: Prometheus marks them stale and a query returns nothing.
            wait_for(
                lambda: not server.query(f'{{__name__=~"docker_xms_container_.*",name="{PREFIX}a"}}'),
                15,
                what="the removed container's series to go stale",
            )
            assert server.query(f'docker_xms_container_rt_budget_seconds{{name="{PREFIX}b"}}')
            assert server.query("docker_xms_reconciliations_total > 0")
        finally:
            server.stop()


def test_the_fell_back_alert_fires_when_the_server_restarts_without_a_budget_and_clears_after_a_rebalance(
    rtpengine_image: str, docker_client: Any, cleanup: None, tmp_path: Path
) -> None:
    # The repository's rules with their `for` cut to nothing, so that the test needs seconds, not minutes.
    rules = tmp_path / "alerts.yml"
    rules.write_text(ALERTS.read_text().replace("for: 1m", "for: 0s").replace("for: 5m", "for: 0s"))
    port = free_port()
    # An exporter only: no agent of this test mends the budget set to 0 by hand.
    with agent_for_a_test(metrics_agent(tmp_path, port, "--no-reconcile")):
        server = Prometheus(tmp_path, f"127.0.0.1:{port}", rules)
        try:
            name = PREFIX + "alert"
            cid = start(name)
            ready = f'docker_xms_container_ready{{name="{name}"}} == 1'
            realtime = f'docker_xms_container_threads{{name="{name}",policy="realtime"}} > 0'
            wait_for(
                lambda: server.query(ready) and server.query(realtime), 90, what="the server to be ready, real-time"
            )
            container = docker_client.containers.get(name)

            # The kernel refuses 0 (EBUSY) while the group has real-time threads; the budget drops to 0 when
            # the server is down, and the server comes back without one: its threads stay SCHED_OTHER.
            assert container.exec_run(["systemctl", "stop", "rtpengine-daemon"]).exit_code == 0
            (PARENT / cid / "cpu.rt_runtime_us").write_text("0\n")
            assert container.exec_run(["systemctl", "start", "rtpengine-daemon"]).exit_code == 0
            wait_for(
                lambda: (
                    server.firing("MediaThreadsFellBackToSchedOther", name)
                    and server.firing("MediaContainerWithoutBudget", name)
                ),
                60,
                what="both alerts to fire",
            )

            assert run_cli("rt", "rebalance").code == 0
            wait_for(
                lambda: not server.firing("MediaContainerWithoutBudget", name), 15, what="the budget alert to clear"
            )
            # A budget back does not make running threads real-time again: the alert holds until the server restarts.
            assert kernel_budget(cid) > 0
            assert server.firing("MediaThreadsFellBackToSchedOther", name)
            assert container.exec_run(["systemctl", "restart", "rtpengine-daemon"]).exit_code == 0
            wait_for(
                lambda: not server.firing("MediaThreadsFellBackToSchedOther", name),
                30,
                what="the fell-back alert to clear",
            )
        finally:
            server.stop()
