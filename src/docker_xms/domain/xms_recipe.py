"""The XMS image recipe: a Dockerfile that installs a media server from its own installer tarball.

The installer is a tarball whose top directory holds an executable install script, run without
questions. XMS's script name and its unattended flags are not confirmed by a public source: they
are data here (INSTALL_SCRIPTS, INSTALL_ARGS) and can be given on the command line.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from docker_xms.domain import recipes
from docker_xms.domain.drain_unit import DRAIN_UNIT
from docker_xms.domain.profiles import MEDIA_ENV, PortSpec, Profile, drain_files
from docker_xms.errors import BadInput

# Preferred first; any executable *install*.sh in the top directory is taken otherwise.
INSTALL_SCRIPTS = ("xms_install.sh", "install.sh")
INSTALL_ARGS = ("-a", "-s")
# What the install script needs before it runs, on RPM bases; it pulls its own packages itself.
RPM_DEPENDENCIES = ("tar", "gzip", "which", "sudo", "procps-ng", "iproute", "net-tools", "openssl", "perl")
RPM_TOOL = {"centos7": "yum", "rocky9": "dnf"}
# Files each container must make for itself. /etc/hosts and /etc/resolv.conf need no step: the
# engine mounts its own over them during a build, so they never reach a layer.
PER_INSTANCE_FILES = ("/usr/dialogic/cfg/mitconfig/ipms_rtp_addr_cfg.xml",)
# Removed with everything in it once the install script has run.
INSTALLER_IN_IMAGE = "/opt/docker-xms-installer"
# Where the drain's unit and script sit in the build context.
DRAIN_CONTEXT = "docker-xms-drain"
LOG_START = "==> docker-xms: installer log begins"
LOG_END = "==> docker-xms: installer exited with status"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Installer:
    """Where the install script sits inside the installer tarball."""

    top_dir: str
    script: str


def find_installer(members: Sequence[tuple[str, bool, bool]], source: str) -> Installer:
    """The install script among tar members given as (name, is a regular file, is executable)."""
    names = {name.strip("/").removeprefix("./"): (is_file, executable) for name, is_file, executable in members}
    names.pop(".", None)
    names.pop("", None)
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) != 1:
        raise BadInput(f"{source} must hold one top directory with the install script in it.")
    top = tops.pop()
    candidates = [f"{top}/{script}" for script in INSTALL_SCRIPTS]
    candidates += sorted(
        n for n in names if n.startswith(f"{top}/") and n.count("/") == 1 and "install" in n and n.endswith(".sh")
    )
    for candidate in candidates:
        is_file, executable = names.get(candidate, (False, False))
        if is_file and executable:
            return Installer(top, candidate.split("/", 1)[1])
    raise BadInput(f"{source} has no executable install script ({' or '.join(INSTALL_SCRIPTS)}) in {top}/.")


def media_ranges(profile: Profile, media_ports: int | None) -> tuple[PortSpec, ...]:
    """The profile's media ranges, or only the first `media_ports` ports of them."""
    if media_ports is None:
        return profile.media_ranges
    if media_ports < 1 or media_ports > profile.media_port_count:
        raise BadInput(f"--media-ports must lie within 1-{profile.media_port_count} for profile {profile.name}.")
    out: list[PortSpec] = []
    left = media_ports
    for spec in profile.media_ranges:
        if left <= 0:
            break
        take = min(left, spec.count)
        out.append(PortSpec(spec.name, spec.protocol, spec.start, spec.start + take - 1, spec.role))
        left -= take
    return tuple(out)


def drain_context(profile: Profile) -> dict[str, tuple[str, bytes]]:
    """The profile's drain ([drain]) as build-context files: context name -> (path in the image, content).

    Installed after the installer, so that whoever stops the container (docker stop, Compose, Swarm,
    docker-xms stop) drains first, as in images built from a package list. Empty without a drain.
    """
    if not profile.drain.command:
        return {}
    return {
        f"{DRAIN_CONTEXT}/{f.path.rsplit('/', 1)[-1]}": (f.path, f.render({}).encode())
        for f in drain_files(profile.drain)
    }


def render(
    profile: Profile,
    base: str,
    distro: str,
    installer_file: str,
    installer: Installer,
    jre_file: str | None = None,
    install_args: Sequence[str] = INSTALL_ARGS,
    media: Sequence[PortSpec] | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """The Dockerfile; `installer_file` and `jre_file` are names in the build context."""
    rpm = distro in RPM_TOOL
    if jre_file and not rpm:
        raise BadInput(f"A JRE RPM needs an RPM base (centos7 or rocky9); the base {base} is {distro}.")
    ranges = tuple(profile.media_ranges if media is None else media)
    lines = [f"FROM {base}"]
    if rpm:
        tool = RPM_TOOL[distro]
        lines.append(f"RUN {tool} -y install {' '.join(RPM_DEPENDENCIES)} && {tool} clean all")
    if jre_file:
        jre_in_image = f"{INSTALLER_IN_IMAGE}/{jre_file}"
        lines += [f"COPY {jre_file} {jre_in_image}", f"RUN rpm -Uvh {jre_in_image} && rm -f {jre_in_image}"]
    script = "./" + installer.script + "".join(" " + shlex.quote(a) for a in install_args)
    workdir = f"{INSTALLER_IN_IMAGE}/{installer.top_dir}"
    # The tech note lets the install step fail (it trips over what a build container lacks, such as
    # a running systemd): its status and log are reported, and the build goes on.
    install = (
        f"tar -xzf {INSTALLER_IN_IMAGE}/{installer_file} -C {INSTALLER_IN_IMAGE} "
        f"&& rm -f {INSTALLER_IN_IMAGE}/{installer_file} && cd {shlex.quote(workdir)} "
        f"&& echo '{LOG_START}' && {{ {script}; status=$?; echo \"{LOG_END} $status\"; }} "
        f"&& cd / && rm -rf {INSTALLER_IN_IMAGE} && rm -f {' '.join(PER_INSTANCE_FILES)}"
    )
    lines += [f"COPY {installer_file} {INSTALLER_IN_IMAGE}/{installer_file}", f"RUN {install}"]
    drain = drain_context(profile)
    if drain:
        # The image build keeps no file mode from the context: the unit runs the script through bash.
        lines += [f"COPY {name} {path}" for name, (path, _) in drain.items()]
        lines.append(f"RUN systemctl enable {DRAIN_UNIT}")
    env = {**profile.build.env}
    if profile.media_config == MEDIA_ENV and ranges:
        env["DOCKER_XMS_MEDIA_START"] = str(ranges[0].start)
        env["DOCKER_XMS_MEDIA_END"] = str(ranges[0].end)
    for key, value in env.items():
        lines.append(f"ENV {key}={json.dumps(value)}")
    lines += recipes.expose_lines(profile.ports)
    all_labels = {
        recipes.LABEL_PROFILE: profile.name,
        recipes.LABEL_BASE: distro,
        # Media ranges are thousands of ports: as EXPOSE entries they would bloat every inspect.
        recipes.LABEL_MEDIA: ",".join(r.label() for r in ranges),
        **(labels or {}),
    }
    for key, value in all_labels.items():
        lines.append(f"LABEL {key}={json.dumps(value)}")
    lines.append(f"STOPSIGNAL {recipes.STOP_SIGNAL}")
    return "\n".join([*lines, ""])


def installer_log(build_log: str) -> tuple[int | None, str]:
    """(the install script's exit status, its output) from the build's log; None if it never ended.

    Markers count only at the start of a line: the build log also echoes the RUN line that prints them.
    """
    # The classic builder colours a step's standard error with escape sequences.
    build_log = _ANSI.sub("", build_log)
    start = re.search(rf"^{re.escape(LOG_START)}$", build_log, re.MULTILINE)
    if start is None:
        return None, ""
    body = build_log[start.end() :].lstrip("\n")
    end = re.search(rf"^{re.escape(LOG_END)} (\d+)$", body, re.MULTILINE)
    if end is None:
        return None, body
    return int(end.group(1)), body[: end.start()]
