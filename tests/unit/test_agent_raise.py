"""What the agent says about the real-time threads of a server it adopts after that server started."""

from __future__ import annotations

from pathlib import Path

from docker_xms.usecases.adoption import Adopted
from docker_xms.usecases.agent import raised_line
from tests.unit.usecase_host import Host, make_host


def _adopted(tmp_path: Path, profile: str) -> tuple[Host, Adopted, list[list[str]]]:
    host = make_host(tmp_path)
    container = host.managed("media")
    ran: list[list[str]] = []

    def answer(cmd: list[str]) -> tuple[int, str]:
        ran.append(cmd)
        # The script prints the name of each thread it raised, one per line.
        return 0, "poller\npoller\nsend timer\n"

    host.engine.answer = answer
    labels = {**container.labels, "io.docker-xms.profile": profile}
    return host, Adopted(container.id, "media", "docker", labels), ran


def test_it_names_the_threads_raised_with_the_profiles_priority(tmp_path: Path) -> None:
    host, adopted, ran = _adopted(tmp_path, "rtpengine")
    line = raised_line(host.rt, adopted)
    assert line == "raised 3 threads of media to SCHED_FIFO 50 (poller, send timer): it started before it had a budget"
    # The profile's names and priority are handed to the script as arguments, never spliced into it.
    assert ran[0][:2] == ["bash", "-c"]
    assert ran[0][3:] == ["raise", "50", "poller", "codec timer", "media player", "send timer"]


def test_nothing_is_said_or_run_for_a_profile_that_names_no_threads_or_is_unknown(tmp_path: Path) -> None:
    for profile in ("xms", "no-such-profile"):
        host, adopted, ran = _adopted(tmp_path / profile, profile)
        assert raised_line(host.rt, adopted) == ""
        assert ran == []


def test_a_refusal_inside_the_container_is_one_line_not_a_failure(tmp_path: Path) -> None:
    host, adopted, _ = _adopted(tmp_path, "rtpengine")
    host.engine.answer = lambda cmd: (1, "chrt: failed to set pid 42's policy: Operation not permitted")
    assert raised_line(host.rt, adopted) == (
        "could not raise the real-time threads of media: Raising the real-time threads in "
        f"{adopted.id[:12]} failed: chrt: failed to set pid 42's policy: Operation not permitted."
    )
