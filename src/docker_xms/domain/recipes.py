"""Image recipes: what goes into a systemd base image and a media-server image. Pure text and data."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from docker_xms.domain.profiles import PortSpec, Profile, template_defaults

DISTROS = ("debian12", "centos7", "rocky9")
STOP_SIGNAL = "SIGRTMIN+3"
LABEL_RECIPE = "io.docker-xms.recipe"
LABEL_PROFILE = "io.docker-xms.profile"
LABEL_BASE = "io.docker-xms.base"
LABEL_MEDIA = "io.docker-xms.media-ports"

BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2", "procps")

# PID 1 of a container docker-xms starts, until its `name=systemd` cgroup mount is writable (docker-xms makes
# its own subtree so from the host: adapters/cgroupns.py); then the image's own command (systemd) as PID 1.
# At most 60 s; on cgroup v2 and where the mount is writable already, at once.
SYSTEMD_GATE = (
    'i=0; while [ -d /sys/fs/cgroup/systemd ] && [ ! -w /sys/fs/cgroup/systemd ] && [ "$i" -lt 600 ]; '
    'do sleep 0.1; i=$((i + 1)); done; exec "$@"'
)
GATE_ENTRYPOINT = ("/bin/sh", "-c", SYSTEMD_GATE, "docker-xms-gate")

# Units that need hardware, a real console or kernel write access a container does not have.
CONTAINER_MASKS = (
    "systemd-remount-fs.service",
    "systemd-firstboot.service",
    "systemd-modules-load.service",
    "systemd-udev-trigger.service",
    "systemd-journald-audit.socket",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "getty.target",
    "console-getty.service",
)

REGISTRY_BASES = {
    "debian12": "debian:bookworm",
    "centos7": "centos:7",
    "rocky9": "rockylinux:9",
}

_INSTALL = {
    "debian12": (
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        + " ".join(BASE_PACKAGES)
        + " && rm -rf /var/lib/apt/lists/*"
    ),
    "centos7": "RUN yum -y install systemd iproute procps-ng && yum clean all",
    "rocky9": "RUN dnf -y install systemd iproute procps-ng && dnf clean all",
}

# Wanted-by links of units that cannot work in a container, removed so systemd reaches `running`.
_PRUNE = (
    "RUN for dir in /lib/systemd/system /usr/lib/systemd/system; do "
    '[ -d "$dir" ] || continue; '
    '(cd "$dir/sysinit.target.wants" 2>/dev/null && for unit in *; do '
    '[ "$unit" = systemd-tmpfiles-setup.service ] || rm -f "$unit"; done); '
    'rm -f "$dir"/local-fs.target.wants/* "$dir"/sockets.target.wants/*udev* '
    '"$dir"/sockets.target.wants/*initctl* "$dir"/basic.target.wants/* '
    '"$dir"/anaconda.target.wants/*; done; '
    "systemctl mask " + " ".join(CONTAINER_MASKS) + " || true"
)


def recipe_hash(data: Mapping[str, object]) -> str:
    """A short digest of everything a recipe depends on, to know when a built image is stale."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def registry_base_dockerfile(distro: str) -> str:
    """A systemd base from the distro's official image, for hosts where a registry answers."""
    init = "/usr/sbin/init" if distro != "debian12" else "/sbin/init"
    return "\n".join(
        [
            f"FROM {REGISTRY_BASES[distro]}",
            "ENV container=docker",
            _INSTALL[distro],
            _PRUNE,
            f"STOPSIGNAL {STOP_SIGNAL}",
            f'CMD ["{init}"]',
            f"LABEL {LABEL_BASE}={distro}",
            "",
        ]
    )


def expose_lines(ports: Sequence[PortSpec]) -> list[str]:
    out = []
    for spec in ports:
        span = str(spec.start) if not spec.is_range else f"{spec.start}-{spec.end}"
        out.append(f"EXPOSE {span}/{spec.protocol}")
    return out


def finish_dockerfile(
    from_ref: str,
    labels: Mapping[str, str],
    env: Mapping[str, str] | None = None,
    expose: Sequence[PortSpec] = (),
    copies: Sequence[tuple[str, str]] = (),
) -> str:
    """The Dockerfile that turns an imported root file system into a bootable systemd image.

    The stop signal is set here rather than in the import because engines before 23 refuse
    STOPSIGNAL as an import change; a metadata-only Dockerfile works on every engine.
    """
    lines = [f"FROM {from_ref}"]
    for source, dest in copies:
        lines.append(f"COPY {source} {dest}")
    merged_env = {"container": "docker", **(env or {})}
    for key, value in merged_env.items():
        lines.append(f"ENV {key}={json.dumps(value)}")
    lines += expose_lines(expose)
    for key, value in labels.items():
        lines.append(f"LABEL {key}={json.dumps(value)}")
    lines += [f"STOPSIGNAL {STOP_SIGNAL}", 'CMD ["/sbin/init"]', ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class RenderedFile:
    path: str
    content: str
    mode: int


def profile_files(
    profile: Profile,
    media_start: int | None = None,
    media_end: int | None = None,
    values: Mapping[str, object] | None = None,
) -> list[RenderedFile]:
    """Build-time and per-instance files, rendered with a media range (the profile's full one by default).

    `values` overrides any other placeholder (an advertised address, a host port); those it leaves
    out keep their defaults, so a caller that knows none of them renders every file all the same.
    """
    media = profile.media
    merged = {
        **template_defaults(profile.ports, profile.variables),
        "media_start": media_start if media_start is not None else (media.start if media else 0),
        "media_end": media_end if media_end is not None else (media.end if media else 0),
        "name": profile.name,
        "profile": profile.name,
        **(values or {}),
    }
    files = [*profile.build.files, *profile.instance_files]
    return [RenderedFile(f.path, f.render(merged).lstrip("\n"), f.mode) for f in files]


# The agent image: docker-xms itself on Debian's Python, with what the agent runs on a node.
AGENT_IMAGE = "docker-xms/agent:latest"
LABEL_AGENT = "io.docker-xms.agent"
# Debian's builds of the package's dependencies (pyproject.toml's names; a unit test keeps them in step).
AGENT_PYTHON_PACKAGES = {
    "docker": "python3-docker",
    "click": "python3-click",
    "rich": "python3-rich",
    "pyyaml": "python3-yaml",
    "prometheus-client": "python3-prometheus-client",
}
# Python, those, and the tools the adapters call.
AGENT_PACKAGES = (
    "python3",
    *AGENT_PYTHON_PACKAGES.values(),
    "iptables",
    "iproute2",
    "util-linux",
    "procps",
)
AGENT_SITE = "/usr/lib/python3/dist-packages/docker_xms"


def agent_recipe(packages: Sequence[str], sources: Mapping[str, bytes]) -> dict[str, object]:
    """Everything the agent image depends on: a change to any source file makes a new image."""
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name] + b"\0")
    return {"packages": list(packages), "sources": digest.hexdigest(), "site": AGENT_SITE}


def agent_dockerfile(from_ref: str, labels: Mapping[str, str]) -> str:
    """The agent image on top of the imported root file system: the package copied in, the agent as command.

    The entrypoint is docker-xms itself, so `docker run IMAGE ps` runs any command and the
    default is the agent, which logs its changes one line each to the container's log.
    """
    lines = [f"FROM {from_ref}", f"COPY docker_xms {AGENT_SITE}"]
    lines += [f"LABEL {key}={json.dumps(value)}" for key, value in labels.items()]
    lines += [
        'ENTRYPOINT ["python3", "-m", "docker_xms"]',
        'CMD ["agent"]',
        # The agent ends its reconciliation on SIGTERM and exits 0.
        "STOPSIGNAL SIGTERM",
        "",
    ]
    return "\n".join(lines)
