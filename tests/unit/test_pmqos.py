"""The CPU wake-up latency hold and the idle state, against files laid out like the kernel's."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from docker_xms.adapters.pmqos import NO_LIMIT_US, CpuLatencyHold, read_idle_state
from docker_xms.errors import BadInput, XmsError


def test_the_hold_writes_the_limit_as_a_binary_int(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    with CpuLatencyHold(0, device) as hold:
        assert hold.limit_us == 0
        assert device.read_bytes() == struct.pack("i", 0)


def test_the_idle_state_reads_the_driver_and_the_limit(tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    (sys_root / "devices/system/cpu/cpuidle").mkdir(parents=True)
    (sys_root / "devices/system/cpu/cpuidle/current_driver").write_text("haltpoll\n")
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(struct.pack("i", NO_LIMIT_US))
    state = read_idle_state(sys_root, device)
    assert (state.driver, state.limit_us) == ("haltpoll", NO_LIMIT_US)
    assert read_idle_state(tmp_path / "nothing", tmp_path / "missing") == type(state)("", None)


def test_a_negative_limit_is_bad_input() -> None:
    with pytest.raises(BadInput, match="0 or more microseconds"):
        CpuLatencyHold(-1)


def test_a_missing_device_is_one_sentence(tmp_path: Path) -> None:
    with (
        pytest.raises(XmsError, match=r"Cannot open .* to limit CPU wake-up latency"),
        CpuLatencyHold(0, tmp_path / "x"),
    ):
        pass
