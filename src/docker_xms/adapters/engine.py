"""The Docker engine: the one module that imports the Docker SDK.

Every engine error is turned into an `XmsError` with one sentence a user can act on, in one place
(`_translated`): a refusal into `XmsError`/`NotFound`/`BadInput`, or into its own type where only the
engine's wording tells it apart (`StartBudgetRefused`, `ContainerBeingRemoved`), and an engine that is not
there, or goes away in the middle of a call, into `EngineUnavailable`, which the agent waits out. Streams from
build, import, pull and push report failures inside a successful response, so every chunk is checked.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

from docker_xms.adapters.engine_list import summary_of
from docker_xms.domain.boot import WRITABLE_CGROUPS
from docker_xms.domain.engine_types import (
    ContainerInfo,
    ContainerSummary,
    CreateSpec,
    EngineInfo,
    Progress,
    engine_kind,
)
from docker_xms.errors import (
    BadInput,
    CgroupsNotWritable,
    ContainerBeingRemoved,
    EngineUnavailable,
    NotFound,
    StartBudgetRefused,
    XmsError,
)

# How long, and how much output, a command run in a container is read for (Engine.exec).
EXEC_TIMEOUT_S = 30.0
EXEC_MAX_BYTES = 4 << 20

# Refusals that only the engine's wording tells apart from others of the same status code, read here and
# nowhere else. runc, when the kernel refuses the budget it writes into a starting container's new group:
BUDGET_REFUSED_AT_START = "cpu.rt_runtime_us: invalid argument"
# An update of a container that a removal has marked ("container is marked for removal and cannot be ..."):
MARKED_FOR_REMOVAL = "marked for removal"
# A removal of a container that another removal is removing ("removal of container ... is already in progress"):
REMOVAL_IN_PROGRESS = "already in progress"


def _ignore(_: dict[str, Any]) -> None:
    return None


def sdk_arguments(spec: CreateSpec) -> dict[str, Any]:
    """The keyword arguments of the SDK's `containers.create` for `spec`."""
    second = 1_000_000_000
    args: dict[str, Any] = {"detach": True, "name": spec.name, "labels": dict(spec.labels)}
    if spec.command is not None:
        args["command"] = list(spec.command)
    if spec.entrypoint is not None:
        args["entrypoint"] = list(spec.entrypoint)
    optional: dict[str, Any] = {
        "environment": dict(spec.environment),
        "cap_add": list(spec.cap_add),
        "stop_signal": spec.stop_signal,
        "ports": spec.ports,
        "network_mode": spec.network_mode,
        "tmpfs": dict(spec.tmpfs),
        "volumes": {path: {"bind": path, "mode": "ro"} for path in spec.read_only_mounts},
        "cgroupns": spec.cgroupns,
        "security_opt": list(spec.security_opt),
        "restart_policy": {"Name": spec.restart_policy} if spec.restart_policy else None,
        "sysctls": dict(spec.sysctls),
        "cpu_rt_runtime": spec.cpu_rt_runtime,
        "cpuset_cpus": spec.cpuset_cpus,
        "stop_timeout": spec.stop_timeout,
    }
    if spec.healthcheck is not None:
        check = spec.healthcheck
        optional["healthcheck"] = {
            "test": list(check.test),
            "interval": check.interval_s * second,
            "timeout": check.timeout_s * second,
            "retries": check.retries,
            "start_period": check.start_period_s * second,
        }
    ulimits = []
    if spec.rtprio is not None:
        ulimits.append({"name": "rtprio", "soft": spec.rtprio, "hard": spec.rtprio})
    if spec.rttime_us is not None:
        ulimits.append({"name": "rttime", "soft": spec.rttime_us[0], "hard": spec.rttime_us[1]})
    optional["ulimits"] = ulimits
    args.update({key: value for key, value in optional.items() if value})
    return args


def _container_info(attrs: dict[str, Any]) -> ContainerInfo:
    state = attrs.get("State") or {}
    host = attrs.get("HostConfig") or {}
    config = attrs.get("Config") or {}
    net = attrs.get("NetworkSettings") or {}
    ip = net.get("IPAddress") or ""
    if not ip:
        for network in (net.get("Networks") or {}).values():
            if network.get("IPAddress"):
                ip = network["IPAddress"]
                break
    return ContainerInfo(
        id=attrs["Id"],
        name=str(attrs.get("Name", "")).lstrip("/"),
        status=state.get("Status", ""),
        pid=int(state.get("Pid") or 0),
        image=config.get("Image", ""),
        labels=dict(config.get("Labels") or {}),
        ip_address=ip,
        cpu_rt_runtime=int(host.get("CpuRealtimeRuntime") or 0),
        cpu_rt_period=int(host.get("CpuRealtimePeriod") or 0),
        cpuset_cpus=str(host.get("CpusetCpus") or ""),
        cgroup_parent=host.get("CgroupParent") or "",
        ports={k: list(v or []) for k, v in (net.get("Ports") or {}).items()},
        restart_policy=(host.get("RestartPolicy") or {}).get("Name", "") or "",
        network_mode=host.get("NetworkMode") or "",
        started_at=state.get("StartedAt", ""),
        exit_code=int(state.get("ExitCode") or 0),
        error=str(state.get("Error") or ""),
        finished_at=str(state.get("FinishedAt") or ""),
        env=tuple(config.get("Env") or ()),
        rttime_us=_soft_limit(host.get("Ulimits"), "rttime"),
    )


def _soft_limit(ulimits: Any, name: str) -> int:
    """A ulimit's soft value from the inspect view's HostConfig.Ulimits; 0 when it is not set.

    Docker names it as it was asked for (`rttime`), Podman by the kernel's name (`RLIMIT_RTTIME`).
    """
    names = {name, f"RLIMIT_{name.upper()}"}
    for limit in ulimits or ():
        if isinstance(limit, dict) and limit.get("Name") in names:
            soft = limit.get("Soft")
            return max(0, soft) if isinstance(soft, int) and not isinstance(soft, bool) else 0
    return 0


def _check_stream(chunks: Iterable[Any], progress: Progress) -> list[dict[str, Any]]:
    """Consume an engine stream, passing each chunk to `progress`, raising on the first error chunk."""
    seen: list[dict[str, Any]] = []
    for raw in chunks:
        items: list[dict[str, Any]]
        if isinstance(raw, dict):
            items = [raw]
        else:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        for chunk in items:
            if chunk.get("error") or chunk.get("errorDetail"):
                detail = chunk.get("errorDetail") or {}
                message = chunk.get("error") or detail.get("message") or "unknown error"
                raise StreamError(str(message).strip(), seen)
            seen.append(chunk)
            progress(chunk)
    return seen


class StreamError(XmsError):
    """An engine stream (build, pull, push, import) reported an error inside its response."""

    def __init__(self, message: str, chunks: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.chunks = chunks

    @property
    def log(self) -> str:
        return "".join(str(c.get("stream", "")) for c in self.chunks)


# How a registry refused a push. Its stream carries only words, so they are read here, once.
PUSH_UNREACHABLE = "unreachable"
PUSH_UNAUTHORIZED = "unauthorized"
PUSH_READ_ONLY = "read-only"
PUSH_REFUSED = "refused"


class PushRefused(StreamError):
    """A registry refused a push; `kind` says how (one of the PUSH_ names), `said` is the registry's own words."""

    def __init__(self, message: str, chunks: list[dict[str, Any]]) -> None:
        super().__init__(message, chunks)
        self.said = message.strip().rstrip(".")
        self.kind = push_refusal_kind(self.said)


def push_refusal_kind(said: str) -> str:
    """The kind of a push's refusal, from the registry's (or the engine's) words."""
    lowered = said.lower()
    if "connection refused" in lowered or "no such host" in lowered or "i/o timeout" in lowered:
        return PUSH_UNREACHABLE
    if "authentication required" in lowered or "unauthorized" in lowered or "denied" in lowered:
        return PUSH_UNAUTHORIZED
    if "405" in lowered or "method not allowed" in lowered:
        return PUSH_READ_ONLY
    return PUSH_REFUSED


class Engine:
    """A thin facade over the Docker SDK client."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.api = client.api

    @classmethod
    def connect(cls, timeout: int = 120, host: str | None = None) -> Engine:
        """The engine at `host` (the settings' docker_host), else where DOCKER_HOST or the socket says."""
        # TLS (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH) stays the SDK's own reading of the environment.
        environment = None if host is None else {**os.environ, "DOCKER_HOST": host}
        try:
            client = docker.from_env(version="auto", timeout=timeout, environment=environment)
            client.ping()
        except CONNECTION_ERRORS as exc:
            raise EngineUnavailable(
                "No Docker engine answered (DOCKER_HOST or /var/run/docker.sock): "
                f"start dockerd and try again ({_short(exc)})."
            ) from exc
        return cls(client)

    def close(self) -> None:
        self._client.close()

    # --- engine -----------------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        data = self._call(self._client.info)
        version = self._call(self._client.version)
        return EngineInfo(
            server_version=str(version.get("Version", "")),
            api_version=str(self.api.api_version),
            cgroup_driver=str(data.get("CgroupDriver", "cgroupfs")),
            cgroup_version=str(data.get("CgroupVersion", "1")),
            security_options=tuple(data.get("SecurityOptions") or ()),
            docker_root=str(data.get("DockerRootDir", "/var/lib/docker")),
            kind=engine_kind(version.get("Components")),
        )

    def events(self, filters: dict[str, Any] | None = None, since: int | None = None) -> Iterator[dict[str, Any]]:
        with _translated("The engine refused to stream its events"):
            stream = self._client.events(decode=True, filters=filters or {}, since=since)
            try:
                yield from stream
            finally:
                stream.close()
        # Without `until` the engine ends the stream only when it goes away (or the connection is cut).
        raise EngineUnavailable("The engine's event stream ended: the engine stopped or the connection was cut.")

    # --- images -----------------------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        with _translated(f"The engine could not look up image {ref}"):
            try:
                self.api.inspect_image(ref)
            except docker.errors.NotFound:
                return False
        return True

    def image_command(self, ref: str) -> tuple[str, ...]:
        """What a container of the image runs by default: its entrypoint, then its command."""
        config = self.inspect_image(ref).get("Config") or {}
        return (*(config.get("Entrypoint") or ()), *(config.get("Cmd") or ()))

    def inspect_image(self, ref: str) -> dict[str, Any]:
        with _translated(f"The engine could not inspect image {ref}", f"There is no image {ref} on this engine."):
            attrs: dict[str, Any] = self.api.inspect_image(ref)
        return attrs

    def import_image_file(self, path: str, repository: str, tag: str, changes: list[str] | None = None) -> str:
        """Import a root file system tarball; returns the new image's ID."""
        # Opened here, so that a file that cannot be read is not taken for an engine that does not answer.
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise BadInput(f"Cannot read {path}: {exc.strerror}.") from exc
        with _translated(f"The engine refused to import {path}"):
            out = self.api.import_image_from_file(path, repository=repository, tag=tag, changes=changes)
        chunks = _check_stream([out], _ignore)
        image_id = next((str(c["status"]) for c in chunks if str(c.get("status", "")).startswith("sha256:")), "")
        return image_id or self.inspect_image(f"{repository}:{tag}")["Id"]

    def import_image_stream(
        self, data: Iterable[bytes], repository: str, tag: str, changes: list[str] | None = None
    ) -> None:
        """Import a root file system tarball given as a byte stream (e.g. a container export)."""
        with _translated("The engine refused the import"):
            out = self.api.import_image(src=data, repository=repository, tag=tag, changes=changes, stream_src=True)
        _check_stream([out], _ignore)

    def refusal_of_import_changes(self, changes: list[str]) -> str:
        """Whether the engine accepts these changes in an import: "" if so, else its refusal.

        Tried with a one-directory root file system under no name, removed at once: engines differ
        in the instructions they accept (20.10 refuses STOPSIGNAL) and say so only when asked.
        """
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("probe")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        with _translated("The engine refused the import"):
            try:
                out = self.api.import_image_from_data(buf.getvalue(), changes=changes)
            except docker.errors.APIError as exc:
                return _explanation(exc)
        try:
            chunks = _check_stream([out], _ignore)
        except StreamError as exc:
            return exc.message
        for chunk in chunks:
            status = str(chunk.get("status", ""))
            if status.startswith("sha256:"):
                self.remove_image(status)
        return ""

    def build(
        self,
        context_tar: bytes,
        tag: str,
        progress: Progress = _ignore,
        labels: dict[str, str] | None = None,
        buildargs: dict[str, str] | None = None,
        network_mode: str | None = None,
    ) -> str:
        """Build from an in-memory context tarball with the classic builder; returns the image ID."""
        with _translated(f"The engine refused the build of {tag}"):
            stream = self.api.build(
                fileobj=io.BytesIO(context_tar),
                custom_context=True,
                tag=tag,
                rm=True,
                forcerm=True,
                decode=True,
                labels=labels,
                buildargs=buildargs,
                network_mode=network_mode,
            )
            chunks = _check_stream(stream, progress)
        image_id = ""
        for chunk in chunks:
            aux = chunk.get("aux") or {}
            if "ID" in aux:
                image_id = str(aux["ID"])
        return image_id or str(self.inspect_image(tag)["Id"])

    def remove_image(self, ref: str, force: bool = False) -> None:
        with _translated(f"The engine could not remove image {ref}"):
            try:
                self.api.remove_image(ref, force=force)
            except docker.errors.NotFound:
                return

    def pull(self, repository: str, tag: str, progress: Progress = _ignore) -> None:
        with _translated(
            f"Pulling {repository}:{tag} failed", f"There is no image {repository}:{tag} in its registry."
        ):
            stream = self.api.pull(repository, tag=tag, stream=True, decode=True)
            _check_stream(stream, progress)

    def push(self, repository: str, tag: str, progress: Progress = _ignore) -> str:
        """Push and return the digest the registry reported."""
        try:
            with _translated(f"Pushing {repository}:{tag} failed"):
                stream = self.api.push(repository, tag=tag, stream=True, decode=True)
                chunks = _check_stream(stream, progress)
        except StreamError as exc:
            raise PushRefused(exc.reason, exc.chunks) from exc
        for chunk in reversed(chunks):
            digest = (chunk.get("aux") or {}).get("Digest")
            if digest:
                return str(digest)
        raise XmsError(f"The registry did not report a digest for {repository}:{tag}.")

    def export_container(self, container_id: str) -> Iterator[bytes]:
        refused = f"The engine could not export {container_id[:12]}"
        with _translated(refused, f"There is no container {container_id[:12]}."):
            stream = self.api.export(container_id)

        # The chunks are read while the caller iterates: the engine can go away then too.
        def chunks() -> Iterator[bytes]:
            with _translated(refused):
                yield from stream

        return chunks()

    # --- swarm services -------------------------------------------------------------------------

    def create_global_service(
        self,
        name: str,
        image: str,
        args: list[str],
        env: Mapping[str, str],
        binds: Iterable[tuple[str, str, bool]],
        cap_add: list[str],
        labels: Mapping[str, str],
        stop_grace_s: float = 10.0,
    ) -> str:
        """A global service on the host network with bind mounts (source, target, read-only) and added
        capabilities; returns its ID."""
        types = docker.types
        container = types.ContainerSpec(
            image,
            args=args,
            env=[f"{key}={value}" for key, value in env.items()],
            mounts=[types.Mount(target, source, type="bind", read_only=ro) for source, target, ro in binds],
            cap_add=cap_add,
            stop_grace_period=int(stop_grace_s * 1_000_000_000),
        )
        template = types.TaskTemplate(container, networks=["host"])
        with _translated(f"The engine could not create the service {name}"):
            if not self._client.info().get("Swarm", {}).get("ControlAvailable"):
                raise BadInput(f"This engine is not a swarm manager: create the service {name} on a manager.")
            created = self.api.create_service(
                template,
                name=name,
                labels=dict(labels),
                mode=types.ServiceMode("global"),
                endpoint_spec=types.EndpointSpec(),
            )
        return str(created["ID"])

    # --- containers -------------------------------------------------------------------------------

    def create_container(self, spec: CreateSpec) -> str:
        """Create (not start) a container; returns its ID."""
        image = spec.image
        with _translated(
            "The engine could not create the container",
            f"There is no image {image} on this engine.",
            kinds={WRITABLE_CGROUPS: CgroupsNotWritable},
        ):
            try:
                container_id = self._create(image, sdk_arguments(spec))
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    raise BadInput(f"A container with that name already exists ({_explanation(exc)}).") from exc
                raise
        return container_id

    def _create(self, image: str, arguments: dict[str, Any]) -> str:
        stop_timeout = arguments.pop("stop_timeout", None)
        if stop_timeout is None:
            return str(self._client.containers.create(image, **arguments).id)
        # The SDK's containers.create has no stop_timeout; its low-level create does. The same translation
        # of the arguments, then that call (what containers.create does itself).
        from docker.models.containers import _create_container_args  # type: ignore[attr-defined]  # noqa: PLC0415

        create = _create_container_args(
            {**arguments, "image": image, "command": arguments.get("command"), "version": self.api._version}
        )
        create["stop_timeout"] = stop_timeout
        return str(self.api.create_container(**create)["Id"])

    def start(self, container_id: str) -> None:
        with _translated(
            "The engine could not start the container", kinds={BUDGET_REFUSED_AT_START: StartBudgetRefused}
        ):
            self.api.start(container_id)

    def put_file(self, container_id: str, path: str, content: bytes, mode: int = 0o644) -> None:
        self.put_files(container_id, [(path, content, mode)])

    def put_files(self, container_id: str, files: Sequence[tuple[str, bytes, int]]) -> None:
        """Absolute paths with their content and mode, written in one archive, in this order."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, content, mode in files:
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size = len(content)
                info.mode = mode
                tar.addfile(info, io.BytesIO(content))
        ok = self._call(self.api.put_archive, container_id, "/", buf.getvalue())
        if not ok:
            raise XmsError(f"The engine could not write {', '.join(p for p, _, _ in files)} into the container.")

    def path_exists(self, container_id: str, path: str) -> bool:
        """Whether a file exists in a (created or running) container's file system."""
        with _translated(f"The engine could not look for {path} in the container"):
            try:
                self.api.get_archive(container_id, path)
            except docker.errors.NotFound:
                return False
        return True

    def bridge_subnet(self, network: str = "bridge") -> str:
        attrs = self._call(self.api.inspect_network, network)
        for config in (attrs.get("IPAM") or {}).get("Config") or []:
            if config.get("Subnet") and ":" not in config["Subnet"]:
                return str(config["Subnet"])
        raise XmsError(f"The engine's {network} network has no IPv4 subnet.")

    def get_container(self, ref: str) -> ContainerInfo:
        with _translated(f"The engine could not inspect container {ref}", f"There is no container {ref}."):
            attrs = self.api.inspect_container(ref)
        return _container_info(attrs)

    def find_container(self, ref: str) -> ContainerInfo | None:
        try:
            return self.get_container(ref)
        except NotFound:
            return None

    def list_containers(self, all: bool = True, label: str | None = None) -> list[ContainerSummary]:
        """The engine's list view, optionally only containers carrying `label`: one request, no inspect."""
        filters = {"label": label} if label else {}
        return [summary_of(raw) for raw in self._call(self.api.containers, all=all, filters=filters)]

    def update_rt_runtime(self, container_id: str, runtime_us: int) -> None:
        """Set a container's real-time runtime through the engine, so its stored config matches.

        The SDK's update() has no cpu_rt arguments; the API's body accepts CpuRealtimeRuntime.
        """
        with _translated(
            f"The engine could not set the real-time budget of {container_id[:12]} to {runtime_us} us",
            f"There is no container {container_id[:12]}.",
            kinds={MARKED_FOR_REMOVAL: ContainerBeingRemoved},
        ):
            url = self.api._url("/containers/{0}/update", container_id)
            response = self.api._post_json(url, data={"CpuRealtimeRuntime": int(runtime_us)})
            self.api._raise_for_status(response)

    def update_cpuset(self, container_id: str, cpus: str) -> None:
        """Set the CPUs a container may run on ("1-3"): the engine applies it and keeps it across restarts."""
        with _translated(
            f"The engine could not set the CPUs of {container_id[:12]} to {cpus}",
            f"There is no container {container_id[:12]}.",
            kinds={MARKED_FOR_REMOVAL: ContainerBeingRemoved},
        ):
            self._client.containers.get(container_id).update(cpuset_cpus=cpus)

    def container_pids(self, container_id: str) -> list[int]:
        """Host PIDs of a running container's processes."""
        top = self._call(self.api.top, container_id, ps_args="-eo pid")
        return [int(row[0]) for row in top.get("Processes") or [] if row and str(row[0]).isdigit()]

    def stop(self, container_id: str, timeout: int | None = 10) -> None:
        """Stop; `timeout` None waits as long as the container's own stop timeout (its profile's drain grace)."""
        with _translated(f"The engine could not stop {container_id[:12]}", f"There is no container {container_id}."):
            self.api.stop(container_id, timeout=timeout)

    def remove(self, container_id: str, force: bool = True) -> None:
        with _translated(f"The engine could not remove {container_id[:12]}"):
            try:
                self.api.remove_container(container_id, force=force, v=True)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                # The other removal finishes the job: for the caller, the container is gone.
                if exc.status_code == 409 and REMOVAL_IN_PROGRESS in _explanation(exc):
                    return
                raise

    def exec(
        self,
        container_id: str,
        cmd: list[str],
        user: str = "",
        environment: dict[str, str] | None = None,
        timeout_s: float = EXEC_TIMEOUT_S,
        max_bytes: int = EXEC_MAX_BYTES,
    ) -> tuple[int, str]:
        """Run a command in a running container; returns (exit code, combined output).

        Bounded: what runs in a container is the container's (a hostile image can put any `chrt` or `bash`
        there), so the output is read for at most `timeout_s` and `max_bytes`, then the stream is closed and
        the call fails; a caller (the agent's one loop) never waits on it for longer.
        """
        what = f"Running {cmd[0]} in {container_id[:12]}"
        with _translated(f"{what} failed"):
            exec_id = self.api.exec_create(container_id, cmd, user=user, environment=environment)
            stream = self.api.exec_start(exec_id, stream=True)
        chunks: list[bytes] = []
        size = [0]
        finished = threading.Event()

        def pump() -> None:
            try:
                for chunk in stream:
                    chunks.append(chunk if isinstance(chunk, bytes) else str(chunk).encode())
                    size[0] += len(chunks[-1])
                    if size[0] > max_bytes:
                        return
            except Exception:  # noqa: S110 - a stream closed by the timeout below, or cut by the engine
                pass
            finally:
                finished.set()

        threading.Thread(target=pump, name="exec-output", daemon=True).start()
        if not finished.wait(timeout_s) or size[0] > max_bytes:
            stream.close()
            limit = (
                f"printed more than {max_bytes:,} bytes" if size[0] > max_bytes else f"ran longer than {timeout_s:g} s"
            )
            raise XmsError(f"{what} stopped being read: it {limit}.")
        with _translated(f"{what} failed"):
            code = self.api.exec_inspect(exec_id).get("ExitCode")
        text = b"".join(chunks).decode("utf-8", "replace")
        return (int(code) if code is not None else -1), text

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with _translated("The engine refused the request", "The engine found nothing by that name"):
            return fn(*args, **kwargs)


# How a connection that is refused, cut or silent surfaces, depending on where in the SDK's stack it is
# noticed: requests wraps most, but streams (events, build, pull, exec output) read the socket through
# urllib3 and http.client directly, and the socket's own OSError can come through any of them.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    docker.errors.DockerException,
)
# What the SDK refuses before asking the engine: the caller's input, not the engine's absence.
_SDK_REFUSALS = (docker.errors.InvalidArgument, docker.errors.InvalidRepository, docker.errors.NullResource)


@contextmanager
def _translated(
    refused: str, missing: str | None = None, kinds: Mapping[str, type[XmsError]] | None = None
) -> Iterator[None]:
    """The one place where what the SDK raises becomes the project's errors.

    `refused` begins the sentence for an engine's refusal, `missing` is the whole sentence for a 404
    (without it a 404 is a refusal too). `kinds` gives the type of a refusal whose explanation holds
    one of its wordings (the sentence stays the same). The project's own errors (a `StreamError`) pass
    unchanged.
    """
    try:
        yield
    except XmsError:
        raise
    except docker.errors.NotFound as exc:
        raise NotFound(missing or f"{refused}: {_explanation(exc)}.") from exc
    except docker.errors.APIError as exc:
        explanation = _explanation(exc)
        kind = next((k for wording, k in (kinds or {}).items() if wording in explanation), XmsError)
        raise kind(f"{refused}: {explanation}.") from exc
    except _SDK_REFUSALS as exc:
        raise BadInput(f"{refused}: {_short(exc)}.") from exc
    except CONNECTION_ERRORS as exc:
        raise EngineUnavailable(
            f"The Docker engine did not answer ({_short(exc)}): start dockerd, or wait for it, and try again."
        ) from exc


def _explanation(exc: Any) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text).strip().rstrip(".")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200].rstrip(".")
