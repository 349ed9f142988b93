from __future__ import annotations

from pathlib import Path

import pytest

import docker_xms
from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain import xms_recipe
from docker_xms.errors import BadInput

INSTALLER = xms_recipe.Installer("dialogic_xms_5.0", "xms_install.sh")


def _render(distro: str = "rocky9", **kwargs: object) -> list[str]:
    xms = load_profile("xms")
    text = xms_recipe.render(xms, "docker-xms/rocky9-systemd:latest", distro, "installer.tgz", INSTALLER, **kwargs)  # type: ignore[arg-type]
    return text.splitlines()


def test_rpm_base_installs_dependencies_then_jre_then_xms() -> None:
    lines = _render(jre_file="jre-8u201-linux-x64.rpm")
    assert lines[0] == "FROM docker-xms/rocky9-systemd:latest"
    assert lines[1].startswith("RUN dnf -y install ")
    jre = next(i for i, line in enumerate(lines) if "rpm -Uvh" in line)
    install = next(i for i, line in enumerate(lines) if "./xms_install.sh -a -s" in line)
    assert 1 < jre < install
    assert "rm -f /usr/dialogic/cfg/mitconfig/ipms_rtp_addr_cfg.xml" in lines[install]
    assert not any("/etc/hosts" in line or "resolv.conf" in line for line in lines)


def test_debian_base_skips_the_package_step_and_refuses_a_jre_rpm() -> None:
    lines = _render("debian12")
    assert not any("dnf" in line or "yum" in line for line in lines)
    with pytest.raises(BadInput, match="RPM base"):
        _render("debian12", jre_file="jre.rpm")
    assert _render("centos7")[1].startswith("RUN yum -y install ")


def test_media_ports_are_a_label_not_thousands_of_expose_lines() -> None:
    lines = _render()
    exposed = [line for line in lines if line.startswith("EXPOSE")]
    assert "EXPOSE 5060/udp" in exposed
    assert "EXPOSE 22/tcp" in exposed
    assert len(exposed) == len(load_profile("xms").ports)
    assert 'LABEL io.docker-xms.media-ports="49152-53152/udp,57344-57840/udp"' in lines
    assert 'LABEL io.docker-xms.profile="xms"' in lines


def test_media_ports_limit_the_baked_range() -> None:
    xms = load_profile("xms")
    ranges = xms_recipe.media_ranges(xms, 10)
    assert [r.label() for r in ranges] == ["49152-49161/udp"]
    assert 'ENV DOCKER_XMS_MEDIA_END="49161"' in _render(media=ranges)
    with pytest.raises(BadInput):
        xms_recipe.media_ranges(xms, 0)
    assert xms_recipe.media_ranges(xms, xms.media_port_count) == xms.media_ranges


def test_install_arguments_are_data_and_quoted() -> None:
    lines = _render(install_args=("--silent", "a b"))
    assert any("./xms_install.sh --silent 'a b';" in line for line in lines)


def test_the_install_script_is_found_in_the_top_directory() -> None:
    members = [
        ("dialogic_xms_5.0", False, True),
        ("dialogic_xms_5.0/xms_install.sh", True, True),
        ("dialogic_xms_5.0/rpms/a.rpm", True, False),
    ]
    assert xms_recipe.find_installer(members, "x.tgz") == INSTALLER
    other = [("./pm/", False, True), ("./pm/setup_install.sh", True, True)]
    assert xms_recipe.find_installer(other, "x.tgz") == xms_recipe.Installer("pm", "setup_install.sh")
    with pytest.raises(BadInput, match="no executable install script"):
        xms_recipe.find_installer([("d/xms_install.sh", True, False)], "x.tgz")
    with pytest.raises(BadInput, match="one top directory"):
        xms_recipe.find_installer([("a/x", True, True), ("b/y", True, True)], "x.tgz")


def test_installer_log_is_cut_from_the_build_log() -> None:
    log = (
        "Step 3/9 : RUN ... echo '==> docker-xms: installer log begins' && ...\n"
        "==> docker-xms: installer log begins\n"
        "\x1b[91mwarning: no systemd\n\x1b[0minstalled\n"
        "==> docker-xms: installer exited with status 3\n"
        "Removing intermediate container\n"
    )
    status, text = xms_recipe.installer_log(log)
    assert status == 3
    assert text == "warning: no systemd\ninstalled\n"
    assert xms_recipe.installer_log("nothing") == (None, "")


XMS_TOML = Path(docker_xms.__file__).parent / "profiles" / "xms.toml"
DRAIN = """
[drain]
grace = 30
before = ["xmserver.service", "xms-oam.service"]
command = "while [ -e /run/busy ]; do sleep 0.2; done"
"""


def with_drain(tmp_path: Path, drain: str = DRAIN) -> Path:
    """The xms profile as a user's copy of it with a [drain] added."""
    path = tmp_path / "xms-drain.toml"
    path.write_text(XMS_TOML.read_text().replace('name = "xms"', 'name = "xms-drain"') + drain)
    return path


def test_a_profile_with_a_drain_gets_its_unit_and_script_after_the_installer(tmp_path: Path) -> None:
    profile = load_profile(str(with_drain(tmp_path)))
    text = xms_recipe.render(profile, "docker-xms/rocky9-systemd:latest", "rocky9", "installer.tgz", INSTALLER)
    lines = text.splitlines()
    install = next(i for i, line in enumerate(lines) if "./xms_install.sh -a -s" in line)
    unit = lines.index("COPY docker-xms-drain/docker-xms-drain.service /etc/systemd/system/docker-xms-drain.service")
    script = lines.index("COPY docker-xms-drain/docker-xms-drain /usr/local/sbin/docker-xms-drain")
    enable = lines.index("RUN systemctl enable docker-xms-drain.service")
    assert install < unit < enable
    assert install < script < enable

    context = xms_recipe.drain_context(profile)
    assert set(context) == {"docker-xms-drain/docker-xms-drain.service", "docker-xms-drain/docker-xms-drain"}
    unit_text = context["docker-xms-drain/docker-xms-drain.service"][1].decode()
    assert "After=xmserver.service xms-oam.service" in unit_text
    assert "TimeoutStopSec=30" in unit_text
    assert "while [ -e /run/busy ]" in context["docker-xms-drain/docker-xms-drain"][1].decode()


def test_the_built_in_xms_profile_has_no_drain_so_its_recipe_has_none() -> None:
    assert xms_recipe.drain_context(load_profile("xms")) == {}
    assert not any("drain" in line for line in _render())


def test_a_drain_that_names_no_units_to_run_before_is_refused_at_load(tmp_path: Path) -> None:
    drain = DRAIN.replace('before = ["xmserver.service", "xms-oam.service"]\n', "")
    with pytest.raises(BadInput, match=r"before.*must name the server's units"):
        load_profile(str(with_drain(tmp_path, drain)))
