"""`run` undoes itself whichever step fails: no container left, the others' budgets as before, no rules.

The host is made of the in-memory fakes (tests/fakes.py): the cgroup files refuse what the kernel
refuses, the engine starts a container into its cgroup with its stored budget, netfilter keeps one set
of forwards per container. A neighbour runs beside with its budget and its forwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from docker_xms.adapters import records
from docker_xms.adapters.engine import sdk_arguments
from docker_xms.errors import BadInput, XmsError
from docker_xms.usecases import rt as rt_module
from docker_xms.usecases.images import Quiet
from docker_xms.usecases.run import RunRequest, run
from tests.unit.usecase_host import IMAGE, NO_SYSTEMD, Host, make_host

NEIGHBOUR_DNAT = "rtp/udp:30000-30099>30000-30099"


@pytest.fixture
def host(tmp_path: Path) -> Host:
    host = make_host(tmp_path)
    host.managed("neighbour", weight="1", dnat=NEIGHBOUR_DNAT)
    host.settle()
    return host


def _run(host: Host, **request: object) -> str:
    fields: dict[str, object] = {"image": IMAGE, "container_address": True, "name": "new", "wait": False}
    fields.update(request)
    result = run(host.given, RunRequest(**fields), Quiet())
    return result.id


def _as_before(host: Host, before: dict[str, object]) -> None:
    assert [c.name for c in host.engine.containers.values()] == ["neighbour"]
    assert _state(host) == before


def _state(host: Host) -> dict[str, object]:
    neighbour = next(iter(host.engine.containers.values()))
    return {
        "parent": host.fs.read_runtime("/docker"),
        "neighbour": host.runtime(neighbour),
        "groups": sorted(host.fs.groups),
        "forwards": {cid: sorted(map(repr, specs)) for cid, specs in host.netfilter.forwards.items()},
    }


def test_a_run_that_succeeds_shares_the_pool_and_adds_its_rules(host: Host) -> None:
    neighbour = next(iter(host.engine.containers.values()))
    assert host.runtime(neighbour) == 950_000

    cid = _run(host)

    assert host.runtime(neighbour) == 475_000
    assert host.runtime(cid) == 475_000
    assert host.engine.containers[cid].cpu_rt_runtime == 475_000
    assert set(host.netfilter.forwards) == {neighbour.id[:12], cid[:12]}


def test_the_users_own_labels_are_on_the_container_and_not_in_docker_xms_record(host: Host) -> None:
    host.rt = replace(host.rt, settings=replace(host.rt.settings, labels="team=media, site=lab"))

    cid = _run(host, labels=("site=edge", "owner=ops"))

    labels = host.engine.containers[cid].labels
    assert {k: labels[k] for k in ("team", "site", "owner")} == {"team": "media", "site": "edge", "owner": "ops"}
    assert not {"team", "site", "owner"} & set(records.load(records.records_path(host.rt.settings))[cid])


@pytest.mark.parametrize("label", ["io.docker-xms.dnat=x/tcp:22-22>22-22", "io.docker-xms=1", "novalue", "=v"])
def test_a_label_in_docker_xms_namespace_or_without_a_key_is_refused_before_anything(host: Host, label: str) -> None:
    before = _state(host)
    with pytest.raises(BadInput, match=r"^Label '"):
        _run(host, labels=(label,))
    _as_before(host, before)


def _fail_on(method: str) -> Callable[[Host], None]:
    def inject(host: Host) -> None:
        host.engine.fail[method] = XmsError(f"The engine refused {method}.")

    return inject


def _rules_fail(host: Host) -> None:
    host.netfilter.fail["reconcile"] = XmsError("iptables refused the rule.")


def _never_ready(host: Host) -> None:
    host.engine.answer = lambda cmd: (1, "starting\n") if cmd[0] == "systemctl" else (0, "")


def _verify_fails(host: Host) -> None:
    booted = host.engine.answer

    def answer(cmd: list[str]) -> tuple[int, str]:
        if cmd[0] == "chrt":
            raise XmsError("Running chrt in the container failed: the engine went away.")
        return booted(cmd)

    host.engine.answer = answer


STEPS: dict[str, tuple[Callable[[Host], None], dict[str, object], type[Exception], str]] = {
    "create": (_fail_on("create_container"), {}, XmsError, "refused create_container"),
    "systemd check": (lambda host: None, {"image": NO_SYSTEMD}, BadInput, "has no systemd"),
    "put_files": (_fail_on("put_files"), {}, XmsError, "refused put_files"),
    "start": (_fail_on("start"), {}, XmsError, "refused start"),
    "rules": (_rules_fail, {}, XmsError, "iptables refused"),
    "readiness": (_never_ready, {"wait": True, "timeout": 0.01}, XmsError, "Not ready after"),
    "verify": (_verify_fails, {"wait": True}, XmsError, "chrt"),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_failing_step_leaves_no_container_the_budgets_as_before_and_no_rules(host: Host, step: str) -> None:
    inject, request, kind, words = STEPS[step]
    before = _state(host)
    inject(host)

    with pytest.raises(kind, match=words):
        _run(host, **request)

    _as_before(host, before)


def test_the_budget_was_taken_before_the_failing_step_and_given_back(host: Host) -> None:
    neighbour = next(iter(host.engine.containers.values()))
    host.engine.fail["start"] = XmsError("The engine refused start.")

    with pytest.raises(XmsError):
        _run(host)

    # The neighbour was shrunk to make room, then grown back.
    written = [value for group, value in host.fs.writes if group == host.engine.cgroup_of(neighbour.id)]
    assert written[-2:] == [475_000, 950_000]


def test_keep_on_failure_keeps_the_container_and_says_so(host: Host) -> None:
    _never_ready(host)

    with pytest.raises(XmsError) as failed:
        _run(host, wait=True, timeout=0.01, keep_on_failure=True)

    assert "was kept for inspection (--keep-on-failure)" in failed.value.message
    assert sorted(c.name for c in host.engine.containers.values()) == ["neighbour", "new"]


def test_a_run_right_after_a_removal_starts_once_the_kernel_has_freed_the_removed_group(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `rm -f old && run`: the old group's directory is gone, but the kernel still counts its budget for a
    # moment, so the engine's first start of the new container is refused and tried again.
    monkeypatch.setattr(rt_module, "RELEASE_WAIT_S", 0.5)
    neighbour = next(iter(host.engine.containers.values()))
    old = host.managed("old")
    host.settle()
    assert (host.runtime(neighbour), host.runtime(old)) == (475_000, 475_000)
    host.fs.linger = 3
    host.engine.vanish(old.id)

    cid = _run(host)

    assert (host.runtime(neighbour), host.runtime(cid)) == (475_000, 475_000)
    assert host.engine.containers[cid].running


def test_a_run_whose_start_the_kernel_keeps_refusing_is_undone(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rt_module, "RELEASE_WAIT_S", 0.1)
    old = host.managed("old")
    host.settle()
    host.fs.linger = 10**9
    host.engine.vanish(old.id)
    before = _state(host)

    with pytest.raises(XmsError, match=r"cpu\.rt_runtime_us: invalid argument"):
        _run(host)

    assert _state(host) == before


@pytest.mark.parametrize(("writable", "userns"), [(True, False), (False, True)])
def test_on_cgroup_v2_systemd_gets_its_own_cgroup_writable_by_the_engine_that_can(
    tmp_path: Path, writable: bool, userns: bool
) -> None:
    """Engine 28's writable-cgroups, or remapped users (which conflict with it): never both, never the host's."""
    host = make_host(tmp_path, cgroup_version=2, userns=userns)
    host.engine.writable_cgroups = writable

    cid = _run(host)

    spec = host.engine.containers[cid].spec
    assert spec.cgroupns == "private"
    assert spec.security_opt == (() if userns else ("writable-cgroups=true",))
    assert (spec.cpu_rt_runtime, spec.rtprio) == (0, 99)


def test_on_cgroup_v2_an_engine_that_refuses_writable_cgroups_gets_one_sentence_and_nothing_is_left(
    tmp_path: Path,
) -> None:
    host = make_host(tmp_path, cgroup_version=2)
    host.engine.writable_cgroups = False

    with pytest.raises(BadInput) as refused:
        _run(host, ports="dnat")

    assert refused.value.exit_code == 2
    assert refused.value.message.startswith("On cgroup v2 this engine cannot give a container a writable cgroup")
    assert "\n" not in refused.value.message
    assert (host.engine.containers, host.netfilter.forwards) == ({}, {})
    assert records.load(records.records_path(host.rt.settings)) == {}


def test_on_podman_systemd_boots_by_podmans_own_systemd_mode_without_the_option_it_refuses(tmp_path: Path) -> None:
    host = make_host(tmp_path, cgroup_version=2, engine_kind="podman")

    cid = _run(host)

    spec = host.engine.containers[cid].spec
    assert (spec.cgroupns, spec.security_opt, spec.entrypoint) == ("private", (), None)
    assert (spec.cpu_rt_runtime, spec.rtprio) == (0, 99)
    # Its cgroup where Podman puts it: no file of Docker's place is looked for.
    assert host.rt.cgroup_of(cid) == f"/machine.slice/libpod-{cid}.scope"
    assert spec.cpuset_cpus == "1"
    # Its forwards tell Podman's bridge from the way out, not Docker's.
    assert (host.rt.bridge, make_host(tmp_path / "docker", cgroup_version=2).rt.bridge) == ("podman0", "docker0")


def test_on_podman_with_cgroup_v1_one_sentence_and_nothing_is_left(tmp_path: Path) -> None:
    host = make_host(tmp_path, cgroup_version=1, engine_kind="podman")

    with pytest.raises(BadInput, match=r"^docker-xms runs systemd containers on Podman only on cgroup v2") as refused:
        _run(host, ports="dnat")

    assert "\n" not in refused.value.message
    assert (host.engine.containers, host.netfilter.forwards) == ({}, {})
    assert records.load(records.records_path(host.rt.settings)) == {}


def test_a_restart_policy_is_the_engines_and_a_bad_one_is_refused_before_anything(host: Host) -> None:
    cid = _run(host, restart="unless-stopped")
    assert host.engine.containers[cid].spec.restart_policy == "unless-stopped"
    assert sdk_arguments(host.engine.containers[cid].spec)["restart_policy"] == {"Name": "unless-stopped"}
    assert "restart_policy" not in sdk_arguments(host.engine.containers[_run(host, name="plain")].spec)
    before = _state(host)
    with pytest.raises(BadInput, match=r"^--restart must be one of no, unless-stopped, always, not 'on-failure'"):
        _run(host, name="other", restart="on-failure")
    assert _state(host) == before
