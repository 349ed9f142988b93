"""Settings: the config file, the environment over it, and one-sentence refusals naming the place."""

from __future__ import annotations

from pathlib import Path

import pytest

from docker_xms.adapters.config import load_settings
from docker_xms.errors import BadInput
from docker_xms.settings import DEFAULT_LOCK, Settings


def _env(config: Path, **extra: str) -> dict[str, str]:
    return {"DOCKER_XMS_CONFIG": str(config), "HOME": "/nonexistent-home", **extra}


def test_missing_file_gives_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(_env(tmp_path / "none.toml"))
    assert settings.rt_pool_us is None
    assert settings.lock_path == DEFAULT_LOCK
    assert settings.roots == (Path("/sys"), Path("/proc"), Path("/boot"))
    assert settings.start_agent is True
    assert settings.docker_host is None
    assert settings.cgroup_driver is None
    assert settings.overrides == ()
    assert settings.real_host
    assert settings.profile_dirs == (Path("/nonexistent-home/.config/docker-xms/profiles"),)


def test_file_values_are_read(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "# the host's settings\n"
        "rt_pool_us = 600000\n"
        'cgroup_parent = "media"\n'
        'cgroup_driver = "systemd"\n'
        f'lock_path = "{tmp_path}/host.lock"\n'
        f'sys_root = "{tmp_path}/sys"\n'
        f'profile_path = ["{tmp_path}/a", "{tmp_path}/b"]\n'
        'docker_host = "unix:///run/other.sock"\n'
        "start_agent = false\n"
    )
    settings = load_settings(_env(config, XDG_CONFIG_HOME=str(tmp_path / "xdg")))
    assert settings.rt_pool_us == 600_000
    assert settings.cgroup_parent == "media"
    assert settings.cgroup_driver == "systemd"
    assert settings.lock_path == tmp_path / "host.lock"
    assert settings.sys_root == tmp_path / "sys"
    assert not settings.real_host
    assert settings.docker_host == "unix:///run/other.sock"
    assert settings.start_agent is False
    assert settings.config_path == config
    # The file's directories first, then the user's own.
    assert settings.profile_dirs == (tmp_path / "a", tmp_path / "b", tmp_path / "xdg/docker-xms/profiles")
    # Nothing came from the environment, so an agent needs only the file's path.
    assert settings.environment() == {"DOCKER_XMS_CONFIG": str(config)}


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('rt_pool_us = 600000\nlock_path = "/run/a.lock"\nstart_agent = true\n')
    settings = load_settings(
        _env(
            config,
            DOCKER_XMS_RT_POOL_US="400000",
            DOCKER_XMS_LOCK=str(tmp_path / "b.lock"),
            DOCKER_XMS_START_AGENT="0",
            DOCKER_XMS_PROFILE_PATH=f"{tmp_path}/p1::{tmp_path}/p2",
            DOCKER_HOST="unix:///x.sock",
        )
    )
    assert settings.rt_pool_us == 400_000
    assert settings.lock_path == tmp_path / "b.lock"
    assert settings.start_agent is False
    assert settings.profile_path == (tmp_path / "p1", tmp_path / "p2")
    assert settings.docker_host == "unix:///x.sock"
    assert settings.environment() == {
        "DOCKER_XMS_CONFIG": str(config),
        "DOCKER_XMS_RT_POOL_US": "400000",
        "DOCKER_XMS_LOCK": str(tmp_path / "b.lock"),
        "DOCKER_XMS_PROFILE_PATH": f"{tmp_path}/p1:{tmp_path}/p2",
        "DOCKER_HOST": "unix:///x.sock",
        "DOCKER_XMS_START_AGENT": "0",
    }


def test_empty_variables_do_not_override(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("rt_pool_us = 600000\n")
    settings = load_settings(_env(config, DOCKER_XMS_RT_POOL_US="", DOCKER_XMS_CGROUP_PARENT=""))
    assert settings.rt_pool_us == 600_000
    assert settings.overrides == ()


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A unit runs the agent from /, so a path the user gave relative to their directory must not move.
    monkeypatch.chdir(tmp_path)
    settings = load_settings(_env(Path("config.toml"), DOCKER_XMS_LOCK="locks/host.lock"))
    assert settings.config_path == tmp_path / "config.toml"
    assert settings.lock_path == tmp_path / "locks/host.lock"
    assert dict(settings.overrides)["DOCKER_XMS_LOCK"] == str(tmp_path / "locks/host.lock")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rt_pool_us = 5\npool = 3\n", r"config.toml, line 2: there is no setting 'pool' \(known: rt_pool_us, "),
        ('\n\nrt_pool_us = "lots"\n', r"config.toml, line 3: rt_pool_us must be a whole number of microseconds"),
        ("rt_pool_us = true\n", r"line 1: rt_pool_us must be a whole number"),
        ("rt_pool_us = -1\n", r"line 1: rt_pool_us must be 0 or more microseconds, not -1"),
        ('start_agent = "yes"\n', r"line 1: start_agent must be true or false, not 'yes'"),
        ("lock_path = 3\n", r"line 1: lock_path must be a path, not 3"),
        ('lock_path = ""\n', r"line 1: lock_path must be a path"),
        ('cgroup_driver = "systemd-ish"\n', r"line 1: cgroup_driver must be cgroupfs or systemd"),
        ("profile_path = [1]\n", r"line 1: profile_path must be a list of directories"),
        ("[agent]\nx = 1\n", r"line 1: there is no setting 'agent'"),
        ("rt_pool_us = \n", r"config.toml is not valid TOML: .*line 1"),
        ("rt_pool_us = 1\nrt_pool_us = 2\n", r"config.toml is not valid TOML"),
        ('labels = "io.docker-xms.dnat=x"\n', r"line 1: Label 'io.docker-xms.dnat' is in docker-xms's own namespace"),
    ],
)
def test_a_bad_file_is_refused_with_its_path_and_line(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(BadInput, match=message) as caught:
        load_settings(_env(config))
    assert str(config) in caught.value.message
    assert caught.value.exit_code == 2
    assert caught.value.message.count(". ") == 0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DOCKER_XMS_RT_POOL_US", "half", r"DOCKER_XMS_RT_POOL_US must be a whole number of microseconds, not 'half'"),
        ("DOCKER_XMS_RT_POOL_US", "-5", r"DOCKER_XMS_RT_POOL_US: rt_pool_us must be 0 or more"),
        ("DOCKER_XMS_START_AGENT", "maybe", r"DOCKER_XMS_START_AGENT must be 1 or 0"),
        ("DOCKER_XMS_CGROUP_DRIVER", "upstart", r"DOCKER_XMS_CGROUP_DRIVER: cgroup_driver must be cgroupfs or systemd"),
        ("DOCKER_XMS_LABELS", "team", r"DOCKER_XMS_LABELS: Label 'team' is not KEY=VALUE"),
        ("DOCKER_XMS_LABELS", "a=" + "x" * 300, r"DOCKER_XMS_LABELS: The value of label 'a' must be printable"),
    ],
)
def test_a_bad_variable_is_refused_by_name(tmp_path: Path, name: str, value: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        load_settings(_env(tmp_path / "none.toml", **{name: value}))


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    # A directory where the file should be: reading fails for root too.
    (tmp_path / "config.toml").mkdir()
    with pytest.raises(BadInput, match=r"Cannot read the settings file .*config.toml"):
        load_settings(_env(tmp_path / "config.toml"))


def test_the_defaults_need_no_file() -> None:
    assert Settings().environment() == {"DOCKER_XMS_CONFIG": "/etc/docker-xms/config.toml"}
