"""The image pipeline: build XMS from its installer, flatten an image to one layer, push it with progress."""

from __future__ import annotations

import re
import secrets
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docker_xms.adapters import hostfiles
from docker_xms.adapters.engine import (
    PUSH_READ_ONLY,
    PUSH_UNAUTHORIZED,
    PUSH_UNREACHABLE,
    Engine,
    PushRefused,
    StreamError,
)
from docker_xms.domain import flatten as plan
from docker_xms.domain import recipes, xms_recipe
from docker_xms.domain.engine_types import CreateSpec
from docker_xms.domain.labels import LABEL_PREFIX
from docker_xms.domain.names import parse_ref
from docker_xms.domain.profiles import Profile
from docker_xms.errors import BadInput, NotFound, StepFailed, XmsError
from docker_xms.usecases.images import Reporter, build_progress, context_tar

FLATTEN_LABEL = f"{LABEL_PREFIX}.flatten-source"
_LAYER_ID = re.compile(r"^[0-9a-f]{12}$")


@dataclass(frozen=True)
class Flattened:
    source: str
    ref: str
    id: str
    size_before: int
    size_after: int
    layers_before: int
    layers_after: int
    # Instructions the engine refused in an import, set by a metadata-only Dockerfile instead.
    finished_by_dockerfile: tuple[str, ...]


def _layers(attrs: dict[str, Any]) -> int:
    return len((attrs.get("RootFS") or {}).get("Layers") or [])


def import_refusals(engine: Engine, changes: list[plan.Change]) -> set[str]:
    """The instruction keywords among `changes` that this engine refuses as import changes."""
    refused: set[str] = set()
    while True:
        now, _ = plan.split_changes(changes, refused)
        message = engine.refusal_of_import_changes([c.line for c in now]) if now else ""
        if not message:
            return refused
        keyword = plan.refused_keyword(message)
        if keyword is None or keyword in refused:
            raise XmsError(f"The engine refused the image's configuration as import changes: {message}.")
        refused.add(keyword)


def flatten(engine: Engine, source: str, target: str, reporter: Reporter) -> Flattened:
    """A one-layer image with `source`'s file system and every part of its configuration in FIELDS.

    The source's file system comes from a container that is created but never started, so nothing
    runs and no per-instance state is written; the container and any temporary name are removed
    whatever happens.
    """
    ref = parse_ref(target, allow_digest=False)
    attrs = engine.inspect_image(source)
    config = attrs.get("Config") or {}
    changes = plan.changes_for(config)
    reporter.phase("Checking which configuration the engine takes in an import")
    refused = import_refusals(engine, changes)
    now, later = plan.split_changes(changes, refused)

    container_id = engine.create_container(
        CreateSpec(
            source,
            # The container only lends its file system: an image without a command still needs one here.
            command=None if (config.get("Cmd") or config.get("Entrypoint")) else ("/",),
            labels={FLATTEN_LABEL: source},
        )
    )
    temp_repo = f"docker-xms-flatten/{secrets.token_hex(6)}"
    import_repo, import_tag = (temp_repo, "rootfs") if later else (ref.repository, ref.tag)
    try:
        reporter.phase(f"Exporting {source} and importing it as one layer")
        engine.import_image_stream(
            engine.export_container(container_id), import_repo, import_tag, changes=[c.line for c in now]
        )
        if later:
            reporter.phase(f"Setting {', '.join(sorted({c.keyword for c in later}))} without a layer")
            imported = str(engine.inspect_image(f"{temp_repo}:rootfs")["Id"])
            dockerfile = plan.metadata_dockerfile(imported, later)
            try:
                engine.build(context_tar({"Dockerfile": dockerfile.encode()}), str(ref), build_progress(reporter))
            except StreamError as exc:
                raise StepFailed(f"Finishing {ref}", exc, detail=exc.log) from exc
    finally:
        engine.remove(container_id)
        if later:
            engine.remove_image(f"{temp_repo}:rootfs")

    flat = engine.inspect_image(str(ref))
    differences = plan.config_differences(config, flat.get("Config") or {})
    if differences:
        raise XmsError(
            f"{ref} was made but its {', '.join(differences)} differ from {source}'s; "
            "remove it and report this engine's version."
        )
    return Flattened(
        source=source,
        ref=str(ref),
        id=str(flat["Id"]),
        size_before=int(attrs.get("Size") or 0),
        size_after=int(flat.get("Size") or 0),
        layers_before=_layers(attrs),
        layers_after=_layers(flat),
        finished_by_dockerfile=tuple(sorted(refused)),
    )


# --- push -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerEvent:
    """One line of a push stream about one layer."""

    layer: str
    status: str
    current: int
    total: int


def layer_event(chunk: dict[str, Any]) -> LayerEvent | None:
    layer = str(chunk.get("id") or "")
    status = str(chunk.get("status") or "")
    # Other lines ("The push refers to repository ...", the tag's digest line) are not about a layer.
    if not status or not _LAYER_ID.match(layer):
        return None
    detail = chunk.get("progressDetail") or {}
    return LayerEvent(layer, status, int(detail.get("current") or 0), int(detail.get("total") or 0))


@dataclass(frozen=True)
class Pushed:
    ref: str
    digest: str
    layers: int


def push(engine: Engine, image: str, on_layer: Callable[[LayerEvent], None]) -> Pushed:
    """Push with the credentials the engine's client keeps; returns the registry's digest."""
    ref = parse_ref(image, allow_digest=False)
    engine.inspect_image(str(ref))
    seen: set[str] = set()

    def progress(chunk: dict[str, Any]) -> None:
        event = layer_event(chunk)
        if event is not None:
            seen.add(event.layer)
            on_layer(event)

    registry = ref.repository.split("/", 1)[0] if "/" in ref.repository else "docker.io"
    try:
        digest = engine.push(ref.repository, ref.tag, progress)
    except PushRefused as exc:
        raise StepFailed(f"Pushing {ref}", exc, why=_push_problem(registry, exc)) from exc
    return Pushed(str(ref), digest, len(seen))


def _push_problem(registry: str, refused: PushRefused) -> str:
    """What a push's refusal means and what to do about it."""
    said = refused.said
    if refused.kind == PUSH_UNREACHABLE:
        return f"no registry answered at {registry} ({said}); start it or check the name."
    if refused.kind == PUSH_UNAUTHORIZED:
        return f"the registry {registry} refused it ({said}); run `docker-xms login`."
    if refused.kind == PUSH_READ_ONLY:
        return (
            f"the registry {registry} does not take uploads (HTTP 405: it is read-only "
            "or a pull-through mirror); push to a registry that accepts images."
        )
    return f"the registry {registry} refused it ({said})."


# --- the XMS image from its installer ---------------------------------------------------------------


@dataclass(frozen=True)
class XmsBuildPlan:
    """Everything an XMS build needs, checked before the engine is contacted."""

    profile: Profile
    ref: str
    base: str
    installer_path: Path
    installer: xms_recipe.Installer
    jre_path: Path | None
    install_args: tuple[str, ...]
    media_ports: int | None

    @property
    def context_names(self) -> tuple[str, str | None]:
        return "installer.tgz", (self.jre_path.name if self.jre_path else None)

    def dockerfile(self, distro: str) -> str:
        installer_name, jre_name = self.context_names
        return xms_recipe.render(
            self.profile,
            self.base,
            distro,
            installer_name,
            self.installer,
            jre_name,
            self.install_args,
            xms_recipe.media_ranges(self.profile, self.media_ports),
        )


def _readable(path: str, what: str) -> Path:
    file = Path(path)
    try:
        with file.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise BadInput(f"Cannot read the {what} {path}: {exc.strerror}.") from None
    if not file.is_file():
        raise BadInput(f"The {what} {path} is not a file.")
    return file


def plan_xms_build(
    profile: Profile,
    tag: str | None,
    installer: str,
    jre: str | None,
    base: str | None,
    media_ports: int | None,
    install_args: tuple[str, ...] | None = None,
) -> XmsBuildPlan:
    """Check the command line and the files it names; refuses bad input before anything is built."""
    ref = parse_ref(tag or profile.build.default_tag or profile.image, allow_digest=False)
    base_ref = str(parse_ref(base or f"docker-xms/{profile.build.distro}-systemd:latest", allow_digest=False))
    installer_path = _readable(installer, "installer")
    try:
        with tarfile.open(installer_path, "r:*") as tar:
            members = [(m.name, m.isfile(), bool(m.mode & 0o111)) for m in tar.getmembers()]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadInput(f"The installer {installer} is not a readable tarball ({exc}).") from None
    found = xms_recipe.find_installer(members, installer)
    jre_path = None
    if jre is not None:
        jre_path = _readable(jre, "JRE")
        if not jre_path.name.endswith(".rpm"):
            raise BadInput(f"The JRE {jre} must be an RPM package (jre-8uNN-linux-x64.rpm).")
    xms_recipe.media_ranges(profile, media_ports)
    return XmsBuildPlan(
        profile,
        str(ref),
        base_ref,
        installer_path,
        found,
        jre_path,
        tuple(xms_recipe.INSTALL_ARGS if install_args is None else install_args),
        media_ports,
    )


@dataclass(frozen=True)
class XmsBuilt:
    ref: str
    id: str
    size: int
    distro: str
    install_status: int | None
    install_log: str
    seconds: float


def base_distro(engine: Engine, base: str) -> str:
    try:
        labels = (engine.inspect_image(base).get("Config") or {}).get("Labels") or {}
    except NotFound:
        raise NotFound(
            f"There is no base image {base}: build one with `docker-xms build-base -t {base} --distro rocky9`."
        ) from None
    distro = str(labels.get(recipes.LABEL_BASE, ""))
    if distro not in recipes.DISTROS:
        raise BadInput(f"The base image {base} was not made by `docker-xms build-base`; give one that was.")
    return distro


def build_xms(engine: Engine, plan: XmsBuildPlan, reporter: Reporter) -> XmsBuilt:
    started = time.monotonic()
    distro = base_distro(engine, plan.base)
    dockerfile = plan.dockerfile(distro)
    installer_name, jre_name = plan.context_names
    files = {"Dockerfile": dockerfile.encode(), installer_name: hostfiles.load_bytes(plan.installer_path)}
    if plan.jre_path is not None and jre_name:
        files[jre_name] = hostfiles.load_bytes(plan.jre_path)
    files.update({name: content for name, (_, content) in xms_recipe.drain_context(plan.profile).items()})
    log: list[str] = []

    def progress(chunk: dict[str, Any]) -> None:
        text = str(chunk.get("stream") or "")
        if text:
            log.append(text)
            if text.startswith("Step "):
                reporter.phase(text.strip())
            else:
                reporter.detail(text)

    reporter.phase(f"Building {plan.ref} from {plan.base} ({distro})")
    try:
        image_id = engine.build(context_tar(files), plan.ref, progress)
    except StreamError as exc:
        raise StepFailed(f"Building {plan.ref}", exc, detail=exc.log) from exc
    status, install_log = xms_recipe.installer_log("".join(log))
    attrs = engine.inspect_image(image_id)
    return XmsBuilt(
        plan.ref,
        str(attrs["Id"]),
        int(attrs.get("Size") or 0),
        distro,
        status,
        install_log,
        time.monotonic() - started,
    )
