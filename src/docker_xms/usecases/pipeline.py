"""The image pipeline: flatten an image to one layer, push it with per-layer progress, build XMS."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from docker_xms.adapters.engine import LABEL_PREFIX, Engine, StreamError
from docker_xms.domain import flatten as plan
from docker_xms.domain.names import parse_ref
from docker_xms.errors import XmsError
from docker_xms.usecases.images import Reporter, _build_progress, context_tar

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
        source,
        # The container only lends its file system: an image without a command still needs one here.
        command=None if (config.get("Cmd") or config.get("Entrypoint")) else ["/"],
        labels={FLATTEN_LABEL: source},
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
                engine.build(context_tar({"Dockerfile": dockerfile.encode()}), str(ref), _build_progress(reporter))
            except StreamError as exc:
                raise XmsError(f"Finishing {ref} failed: {exc.message}\n{exc.log}") from exc
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
    except StreamError as exc:
        raise XmsError(_push_failure(str(ref), registry, exc.message)) from exc
    return Pushed(str(ref), digest, len(seen))


def _push_failure(ref: str, registry: str, message: str) -> str:
    text = message.strip().rstrip(".")
    lowered = text.lower()
    if "connection refused" in lowered or "no such host" in lowered or "i/o timeout" in lowered:
        return f"Pushing {ref} failed: no registry answered at {registry} ({text}); start it or check the name."
    if "authentication required" in lowered or "unauthorized" in lowered or "denied" in lowered:
        return f"Pushing {ref} failed: the registry {registry} refused it ({text}); run `docker-xms login`."
    if "405" in lowered or "method not allowed" in lowered:
        return (
            f"Pushing {ref} failed: the registry {registry} does not take uploads (HTTP 405: it is read-only "
            "or a pull-through mirror); push to a registry that accepts images."
        )
    return f"Pushing {ref} failed: the registry {registry} refused it ({text})."
