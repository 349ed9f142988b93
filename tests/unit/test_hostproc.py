"""Host programs: exit codes and output come back; a program that cannot run or hangs is one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from docker_xms.adapters.hostproc import Finished, pids_named, run, which
from docker_xms.errors import XmsError


def test_a_program_s_exit_code_and_output_come_back() -> None:
    done = run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (done.code, done.out, done.err) == (3, "out\n", "err\n")
    assert done.last_line() == "err"


def test_the_last_line_falls_back_to_stdout_then_the_exit_code() -> None:
    assert Finished(1, "a\nb\n", "").last_line() == "b"
    assert Finished(4, "", "").last_line() == "exit 4"


def test_a_missing_program_is_one_sentence() -> None:
    assert which("no-such-program-here") is None
    with pytest.raises(XmsError, match="Could not run no-such-program-here"):
        run(["no-such-program-here"])


def test_a_program_that_does_not_end_in_time_is_one_sentence() -> None:
    with pytest.raises(XmsError, match=r"Could not run sleep 5: .*timed out"):
        run(["sleep", "5"], timeout=0.2)


def test_processes_are_found_by_name_in_a_proc_tree(tmp_path: Path) -> None:
    for pid, comm in ((12, "docker-proxy\n"), (7, "dockerd\n"), (30, "docker-proxy\n")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(comm)
    (tmp_path / "99").mkdir()  # ended while listed: no comm file
    (tmp_path / "self").mkdir()
    assert pids_named("docker-proxy", tmp_path) == [12, 30]
    assert pids_named("nothing", tmp_path) == []
