"""A failed build, finish, push or pull says what was being done first and keeps the engine's error whole.

The engine here is a stand-in that answers only what these use cases ask, and whose build, push or pull fails
the way the real engine's stream does (a `StreamError` carrying the chunks seen so far).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any, cast

import pytest

from docker_xms.adapters.engine import Engine, PushRefused, StreamError
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain import recipes
from docker_xms.domain.names import parse_ref
from docker_xms.errors import BadInput, NotFound, StepFailed, XmsError
from docker_xms.usecases import images, pipeline, run
from docker_xms.usecases.images import Quiet
from tests.fakes import FakeEngine

LOG = [{"stream": "Step 1/2 : FROM base\n"}, {"stream": " ---> 1234\n"}]


class _Engine:
    """Images that exist, one failure to raise, and the calls made."""

    def __init__(self, failure: XmsError, labels: dict[str, str] | None = None) -> None:
        self.failure = failure
        self.labels = labels or {}
        self.calls: list[str] = []

    def image_exists(self, ref: str) -> bool:
        return False

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return {"Id": "sha256:" + "a" * 64, "Config": {"StopSignal": "SIGINT", "Labels": self.labels}, "Size": 1}

    def import_image_file(self, path: str, repository: str, tag: str, changes: list[str] | None = None) -> str:
        return "sha256:" + "b" * 64

    def refusal_of_import_changes(self, changes: list[str]) -> str:
        return "stopsignal is not a valid change command" if any("STOPSIGNAL" in c for c in changes) else ""

    def create_container(self, spec: object) -> str:
        return "c" * 64

    def export_container(self, container_id: str) -> list[bytes]:
        return [b""]

    def import_image_stream(self, *args: object, **kwargs: object) -> str:
        return "sha256:" + "b" * 64

    def remove(self, container_id: str) -> None:
        self.calls.append("remove")

    def remove_image(self, ref: str) -> None:
        self.calls.append(f"remove_image {ref}")

    def pull(self, *args: object, **kwargs: object) -> None:
        self.calls.append("pull")

    def build(self, *args: object, **kwargs: object) -> str:
        raise self.failure

    def push(self, *args: object, **kwargs: object) -> str:
        raise self.failure


def _engine(failure: XmsError, labels: dict[str, str] | None = None) -> Engine:
    return cast(Engine, _Engine(failure, labels))


def _stream(message: str = "The command '/bin/sh -c false' returned a non-zero code: 1") -> StreamError:
    return StreamError(message, list(LOG))


def _kept(raised: pytest.ExceptionInfo[XmsError], stream: StreamError) -> StepFailed:
    error = raised.value
    assert isinstance(error, StepFailed)
    assert error.cause is stream
    assert error.__cause__ is stream
    assert error.exit_code == 1
    return error


def test_a_step_failed_reads_step_then_cause_and_keeps_the_cause_and_its_exit_code() -> None:
    cause = BadInput("The file x is not there.")
    error = StepFailed("Reading x", cause)
    assert error.message == "Reading x failed: The file x is not there."
    assert (error.step, error.cause, error.exit_code) == ("Reading x", cause, 2)
    assert StepFailed("Reading x", cause, why="it is gone.", detail="").message == "Reading x failed: it is gone.\n"
    error.add_context("Nothing was changed.")
    assert str(error) == "Reading x failed: The file x is not there. Nothing was changed."


def test_a_failed_finish_of_an_imported_root_file_system_keeps_the_engines_error(tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"\0" * 1024)
    stream = _stream()
    engine = _engine(stream)
    ref = parse_ref("docker-xms/x:1")
    with pytest.raises(XmsError) as raised:
        images._import_and_finish(engine, tarball, ref, lambda image_id: f"FROM {image_id}\n", Quiet())
    error = _kept(raised, stream)
    assert error.message == f"Finishing {ref} failed: {stream.message}\n{stream.log}"
    assert error.message == (
        "Finishing docker-xms/x:1 failed: The command '/bin/sh -c false' returned a non-zero code: 1\n"
        "Step 1/2 : FROM base\n ---> 1234\n"
    )
    # The temporary name goes whatever happened.
    assert [c for c in cast(_Engine, engine).calls if c.startswith("remove_image docker-xms-build/")]


def test_a_failed_build_of_a_base_from_its_registry_image_keeps_the_engines_error() -> None:
    stream = _stream()
    with pytest.raises(XmsError) as raised:
        images.build_base(_engine(stream), "docker-xms/rocky9-systemd:latest", "rocky9", False, Quiet())
    error = _kept(raised, stream)
    ref = "docker-xms/rocky9-systemd:latest"
    assert error.message == f"Building {ref} failed: {stream.message}\n{stream.log}"


def test_a_base_whose_registry_did_not_answer_says_so_and_keeps_the_pulls_error() -> None:
    missing = NotFound("There is no image rockylinux:9 in its registry.")

    class _NoRegistry(_Engine):
        def pull(self, *args: object, **kwargs: object) -> None:
            raise missing

    with pytest.raises(XmsError) as raised:
        images.build_base(cast(Engine, _NoRegistry(missing)), "b:1", "rocky9", False, Quiet())
    assert raised.value.message == (
        "No registry answered for rockylinux:9 (There is no image rockylinux:9 in its registry); "
        "only debian12 can be built offline."
    )
    assert raised.value.exit_code == 1
    assert raised.value.__cause__ is missing


def test_a_failed_finish_of_a_flattened_image_keeps_the_engines_error() -> None:
    stream = _stream("failed to set STOPSIGNAL")
    engine = _engine(stream)
    with pytest.raises(XmsError) as raised:
        pipeline.flatten(engine, "source:1", "flat:1", Quiet())
    error = _kept(raised, stream)
    assert error.message == f"Finishing flat:1 failed: {stream.message}\n{stream.log}"
    assert "remove" in cast(_Engine, engine).calls


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        (
            "dial tcp 127.0.0.1:5000: connect: connection refused.",
            "Pushing localhost:5000/x:1 failed: no registry answered at localhost:5000 (dial tcp 127.0.0.1:5000: "
            "connect: connection refused); start it or check the name.",
        ),
        (
            "unauthorized: authentication required",
            "Pushing localhost:5000/x:1 failed: the registry localhost:5000 refused it (unauthorized: "
            "authentication required); run `docker-xms login`.",
        ),
        (
            "unexpected status: 405 Method Not Allowed",
            "Pushing localhost:5000/x:1 failed: the registry localhost:5000 does not take uploads (HTTP 405: it is "
            "read-only or a pull-through mirror); push to a registry that accepts images.",
        ),
        (
            "blob upload unknown",
            "Pushing localhost:5000/x:1 failed: the registry localhost:5000 refused it (blob upload unknown).",
        ),
    ],
)
def test_a_failed_push_says_what_the_registry_meant_and_keeps_the_engines_error(said: str, expected: str) -> None:
    stream = PushRefused(said, list(LOG))
    with pytest.raises(XmsError) as raised:
        pipeline.push(_engine(stream), "localhost:5000/x:1", lambda event: None)
    assert _kept(raised, stream).message == expected


def _installer(tmp_path: Path) -> Path:
    path = tmp_path / "xms.tgz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("dialogic_xms_5.0/xms_install.sh")
        info.size = 2
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(b"#!"))
    return path


def test_a_failed_xms_build_keeps_the_engines_error(tmp_path: Path) -> None:
    plan = pipeline.plan_xms_build(load_profile("xms"), "lab/xms:1", str(_installer(tmp_path)), None, None, None)
    stream = _stream()
    with pytest.raises(XmsError) as raised:
        pipeline.build_xms(_engine(stream, {recipes.LABEL_BASE: "rocky9"}), plan, Quiet())
    error = _kept(raised, stream)
    assert error.message == f"Building {plan.ref} failed: {stream.message}\n{stream.log}"
    assert error.message.startswith("Building lab/xms:1 failed: The command ")


def test_an_image_that_cannot_be_pulled_is_not_found_whatever_stopped_the_pull_and_keeps_that_error() -> None:
    engine = FakeEngine()
    refused = XmsError("The engine refused the pull.")
    engine.fail["pull"] = refused
    with pytest.raises(NotFound) as raised:
        run._ensure_image(engine, load_profile("rtpengine"), "lab/none:1", False, Quiet())
    assert raised.value.message == (
        "Image lab/none:1 is not on this engine and could not be pulled: The engine refused the pull "
        "(build it with `docker-xms build --profile rtpengine`)."
    )
    assert (raised.value.exit_code, raised.value.__cause__) == (2, refused)
