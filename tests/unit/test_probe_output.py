from __future__ import annotations

import pytest

from docker_xms.errors import XmsError
from docker_xms.usecases.probe import SchedulingRefused, parse_cyclictest_histogram, parse_probe_output

# The tail of `cyclictest -q -m -p 0 -i 1000 -D 2 -h 50` on a 2-core Debian 12 machine, shortened to a few buckets.
CYCLICTEST = """\
000000 000000
000016 000010
000022 001000
000030 000900
000045 000086
000049 000002
# Total: 000002000
# Min Latencies: 00016
# Avg Latencies: 00022
# Max Latencies: 00055
# Histogram Overflows: 00002
# Histogram Overflow at cycle number:
# Thread 0: 00578 00579
"""


def test_cyclictest_histogram() -> None:
    stats = parse_cyclictest_histogram(CYCLICTEST)
    assert stats.count == 2000
    assert stats.p50 == 22
    assert stats.p99 == 45
    assert stats.p999 == 49
    assert stats.max == 55


def test_cyclictest_without_histogram() -> None:
    with pytest.raises(XmsError, match="no histogram"):
        parse_cyclictest_histogram("Unable to change scheduling policy!\n")


def test_probe_output_with_samples() -> None:
    out = 'probe: mlockall failed\n12\n7\n30\n{"tool":"probe","refused":false,"policy":"SCHED_OTHER","priority":0}\n'
    summary, samples = parse_probe_output(out, 0)
    assert summary["policy"] == "SCHED_OTHER"
    assert samples == [12.0, 7.0, 30.0]


def test_probe_refusal() -> None:
    out = '{"tool":"probe","refused":true,"requested_policy":"SCHED_FIFO","requested_priority":80,"errno":"EPERM"}\n'
    with pytest.raises(SchedulingRefused, match="priority 80") as caught:
        parse_probe_output(out, 80)
    assert caught.value.tool == "probe"
    assert caught.value.exit_code == 1


def test_probe_without_summary() -> None:
    with pytest.raises(XmsError, match="no summary"):
        parse_probe_output("exec format error\n", 0)
