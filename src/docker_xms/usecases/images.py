"""Building images: the systemd base and media-server images from their profiles."""

from __future__ import annotations

import io
import secrets
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from docker_xms import __version__
from docker_xms.adapters import hostfiles, rootfs
from docker_xms.adapters.engine import Engine, StreamError
from docker_xms.domain import recipes
from docker_xms.domain.labels import PLAN_WAIT_LABEL
from docker_xms.domain.names import ImageRef, parse_ref
from docker_xms.domain.profiles import Profile
from docker_xms.errors import BadInput, StepFailed, XmsError


class Reporter(Protocol):
    def phase(self, text: str) -> None: ...

    def detail(self, text: str) -> None: ...


class Quiet:
    def phase(self, text: str) -> None:
        return None

    def detail(self, text: str) -> None:
        return None


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    id: str
    size: int
    how: str
    reused: bool = False


def _image_result(engine: Engine, ref: ImageRef, how: str, reused: bool = False) -> BuiltImage:
    attrs = engine.inspect_image(str(ref))
    return BuiltImage(str(ref), str(attrs["Id"]), int(attrs.get("Size") or 0), how, reused)


def context_tar(files: dict[str, bytes]) -> bytes:
    """An in-memory build context holding `files` (name -> content)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def build_progress(reporter: Reporter) -> Callable[[dict[str, Any]], None]:
    def show(chunk: dict[str, Any]) -> None:
        text = str(chunk.get("stream") or chunk.get("status") or "").strip()
        if text:
            reporter.detail(text)

    return show


@contextmanager
def _scratch() -> Iterator[Path]:
    # Root file systems are hundreds of MB: keep them off a tmpfs /tmp.
    with tempfile.TemporaryDirectory(prefix="docker-xms-", dir="/var/tmp") as tmp:
        yield Path(tmp)


def _import_and_finish(
    engine: Engine,
    tarball: Path,
    ref: ImageRef,
    dockerfile: Callable[[str], str],
    reporter: Reporter,
    context: dict[str, bytes] | None = None,
) -> None:
    """Import a root file system under a temporary name, finish it with a Dockerfile, drop the name.

    `context` holds files the Dockerfile copies in. A failure at any step leaves neither the
    temporary image nor a half-built `ref` behind.
    """
    before = _built_here(engine, str(ref))
    replaced = before[0] if before else ""
    temp_repo = f"docker-xms-build/{secrets.token_hex(6)}"
    reporter.phase(f"Importing the root file system ({tarball.stat().st_size // 2**20} MB)")
    image_id = engine.import_image_file(
        str(tarball),
        repository=temp_repo,
        tag="rootfs",
        changes=['CMD ["/sbin/init"]', "ENV container=docker"],
    )
    try:
        reporter.phase(f"Finishing {ref}")
        files = {**(context or {}), "Dockerfile": dockerfile(image_id).encode()}
        try:
            built = engine.build(context_tar(files), str(ref), progress=build_progress(reporter))
        except StreamError as exc:
            raise StepFailed(f"Finishing {ref}", exc, detail=exc.log) from exc
    finally:
        # Untags the temporary name; the layers stay as the parent of `ref` when the build worked.
        engine.remove_image(f"{temp_repo}:rootfs")
    if replaced and replaced != built:
        _drop_replaced(engine, replaced, ref, reporter)


def _built_here(engine: Engine, ref: str) -> tuple[str, str] | None:
    """(ID, recipe hash) of the image `ref` names now when docker-xms built it (it carries a recipe label)."""
    if not engine.image_exists(ref):
        return None
    image = engine.inspect_image(ref)
    recipe = (image.get("Config", {}).get("Labels") or {}).get(recipes.LABEL_RECIPE)
    return (str(image["Id"]), str(recipe)) if recipe is not None else None


def image_current(engine: Engine, tag: str, recipe: dict[str, object]) -> bool:
    """Whether `tag` names an image docker-xms built from exactly this recipe."""
    built = _built_here(engine, tag)
    return built is not None and built[1] == recipes.recipe_hash(recipe)


def _drop_replaced(engine: Engine, image_id: str, ref: ImageRef, reporter: Reporter) -> None:
    """Remove the image a rebuild took `ref` from, so that rebuilds leave no untagged images behind.

    Without force: the engine keeps it when a container uses it or another name still points at it.
    """
    try:
        engine.remove_image(image_id)
    except XmsError:
        reporter.detail(f"The image {ref} named before ({image_id[7:19]}) is kept: a container or a name uses it.")
        return
    reporter.detail(f"Removed the image {ref} named before ({image_id[7:19]}).")


def build_base(engine: Engine, tag: str, distro: str, offline: bool, reporter: Reporter) -> BuiltImage:
    """A base image that boots full systemd in a container."""
    ref = parse_ref(tag, allow_digest=False)
    if distro not in recipes.DISTROS:
        raise BadInput(f"Unknown distro {distro!r}: choose one of {', '.join(recipes.DISTROS)}.")
    if offline and distro != "debian12":
        raise BadInput(f"Only debian12 can be built offline; {distro} needs its official image from a registry.")
    if offline:
        rootfs.check_available()
        return _build_base_offline(engine, ref, distro, reporter)
    base = recipes.REGISTRY_BASES[distro]
    reporter.phase(f"Pulling {base}")
    repository, _, base_tag = base.partition(":")
    try:
        engine.pull(repository, base_tag, progress=build_progress(reporter))
    except XmsError as exc:
        if distro != "debian12":
            # A new error on purpose: whatever kind stopped the pull, for this distro it means one thing, that the
            # registry is its only source, and the way out is the same.
            raise XmsError(
                f"No registry answered for {base} ({exc.message.rstrip('.')}); only debian12 can be built offline."
            ) from exc
        reporter.phase("No registry answered: building the Debian 12 root file system offline")
        rootfs.check_available()
        return _build_base_offline(engine, ref, distro, reporter)
    reporter.phase(f"Building {ref} from {base}")
    dockerfile = recipes.registry_base_dockerfile(distro)
    try:
        engine.build(context_tar({"Dockerfile": dockerfile.encode()}), str(ref), build_progress(reporter))
    except StreamError as exc:
        raise StepFailed(f"Building {ref}", exc, detail=exc.log) from exc
    return _image_result(engine, ref, f"{base} + systemd")


def _build_base_offline(engine: Engine, ref: ImageRef, distro: str, reporter: Reporter) -> BuiltImage:
    spec = rootfs.RootfsSpec(
        suite=rootfs.suite_for(distro), packages=recipes.BASE_PACKAGES, mask_units=recipes.CONTAINER_MASKS
    )
    labels = {recipes.LABEL_BASE: distro, recipes.LABEL_RECIPE: recipes.recipe_hash(spec.__dict__)}
    with _scratch() as tmp:
        reporter.phase(f"Building a {distro} root file system with mmdebstrap")
        tarball = rootfs.build(spec, tmp / "rootfs.tar", reporter.detail)
        _import_and_finish(engine, tarball, ref, lambda image_id: recipes.finish_dockerfile(image_id, labels), reporter)
    return _image_result(engine, ref, f"mmdebstrap {spec.suite}, offline")


def profile_recipe(profile: Profile) -> dict[str, object]:
    """Everything a profile image depends on; its hash tells whether a built image is current."""
    return {
        "packages": rootfs.packages_with(recipes.BASE_PACKAGES, profile.build.packages),
        "masks": recipes.CONTAINER_MASKS,
        "enable": profile.build.enable_units,
        "files": [(f.path, f.content, f.mode) for f in recipes.profile_files(profile)],
        "env": profile.build.env,
        "ports": [p.label() for p in (*profile.ports, *profile.media_ranges)],
    }


def build_profile_image(
    engine: Engine, profile: Profile, tag: str | None, reporter: Reporter, reuse: bool = False
) -> BuiltImage:
    """A media-server image from a profile whose recipe is a list of Debian packages and files."""
    ref = parse_ref(tag or profile.build.default_tag or profile.image, allow_digest=False)
    if profile.build.distro != "debian12" or not profile.build.packages:
        raise BadInput(
            f"Profile {profile.name} is built from its installer: give --installer "
            f"(packages alone build only debian12 profiles)."
        )
    if reuse and image_current(engine, str(ref), profile_recipe(profile)):
        return _image_result(engine, ref, "already built from this recipe", reused=True)
    rootfs.check_available()
    files = recipes.profile_files(profile)
    labels = {
        recipes.LABEL_PROFILE: profile.name,
        recipes.LABEL_BASE: profile.build.distro,
        recipes.LABEL_RECIPE: recipes.recipe_hash(profile_recipe(profile)),
        # Media ranges are thousands of ports: as EXPOSE entries they would bloat every inspect.
        recipes.LABEL_MEDIA: ",".join(r.label() for r in profile.media_ranges),
        # Its server waits for the container's plan (domain/plan_unit.py).
        **({PLAN_WAIT_LABEL: "true"} if profile.waits_for_plan else {}),
    }
    with _scratch() as tmp:
        uploads = []
        for i, rendered in enumerate(files):
            local = tmp / f"file-{i}"
            hostfiles.save_text(local, rendered.content, rendered.mode)
            uploads.append((local, rendered.path))
        spec = rootfs.RootfsSpec(
            suite=rootfs.suite_for(profile.build.distro),
            packages=rootfs.packages_with(recipes.BASE_PACKAGES, profile.build.packages),
            mask_units=recipes.CONTAINER_MASKS,
            enable_units=profile.build.enable_units,
            uploads=tuple(uploads),
        )
        reporter.phase(
            f"Building the {profile.name} root file system with mmdebstrap ({', '.join(profile.build.packages)})"
        )
        tarball = rootfs.build(spec, tmp / "rootfs.tar", reporter.detail)
        _import_and_finish(
            engine,
            tarball,
            ref,
            lambda image_id: recipes.finish_dockerfile(image_id, labels, env=profile.build.env, expose=profile.ports),
            reporter,
        )
    return _image_result(engine, ref, f"profile {profile.name}, mmdebstrap, offline")


def build_agent_image(engine: Engine, tag: str | None, reporter: Reporter, reuse: bool = False) -> BuiltImage:
    """The agent's image, offline: Debian's Python and the package's dependencies, and this docker-xms copied in.

    It is what a Swarm global service (`docker-xms agent service`) runs on every node.
    """
    ref = parse_ref(tag or recipes.AGENT_IMAGE, allow_digest=False)
    sources = hostfiles.package_files()
    recipe = recipes.agent_recipe(recipes.AGENT_PACKAGES, sources)
    if reuse and image_current(engine, str(ref), recipe):
        return _image_result(engine, ref, "already built from this recipe", reused=True)
    rootfs.check_available()
    labels = {recipes.LABEL_AGENT: __version__, recipes.LABEL_RECIPE: recipes.recipe_hash(recipe)}
    context = {f"docker_xms/{name}": content for name, content in sources.items()}
    with _scratch() as tmp:
        spec = rootfs.RootfsSpec(suite=rootfs.suite_for("debian12"), packages=recipes.AGENT_PACKAGES)
        reporter.phase(f"Building the agent's root file system with mmdebstrap ({', '.join(recipes.AGENT_PACKAGES)})")
        tarball = rootfs.build(spec, tmp / "rootfs.tar", reporter.detail)
        _import_and_finish(
            engine, tarball, ref, lambda image_id: recipes.agent_dockerfile(image_id, labels), reporter, context
        )
    return _image_result(engine, ref, f"docker-xms {__version__} on Debian 12's Python, mmdebstrap, offline")
