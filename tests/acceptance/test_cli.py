"""The installed CLI as a user runs it: help, version, the Docker CLI plugin, the tech note's scripts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli_path, run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_commands_and_starts_fast() -> None:
    started = time.monotonic()
    result = run_cli("--help")
    elapsed = time.monotonic() - started
    assert result.code == 0
    for command in ("run", "ps", "shell", "stop", "rm", "route", "rt", "build", "build-base"):
        assert f"  {command} " in result.out
    print(f"docker-xms --help took {elapsed * 1000:.0f} ms")


def test_version() -> None:
    result = run_cli("--version")
    assert result.code == 0
    assert result.out.startswith("docker-xms, version ")


def test_docker_cli_plugin(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.fail("the docker client is needed for the plugin test")
    plugins = tmp_path / "cli-plugins"
    plugins.mkdir()
    (plugins / "docker-xms").symlink_to(cli_path())
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}
    listed = subprocess.run([docker, "--help"], capture_output=True, text=True, env=env)
    assert "xms" in listed.stdout
    profiles = subprocess.run([docker, "xms", "profiles", "--json"], capture_output=True, text=True, env=env)
    assert profiles.returncode == 0, profiles.stderr
    assert {"rtpengine", "xms"} <= {p["name"] for p in json.loads(profiles.stdout)}


def test_tech_note_scripts_refuse_bad_usage() -> None:
    for script in ("run_xms_container.sh", "nsenter.sh"):
        proc = subprocess.run(["bash", str(ROOT / "scripts" / script)], capture_output=True, text=True)
        assert proc.returncode == 2
        assert "usage:" in proc.stderr


def test_run_xms_container_script_starts_through_docker_xms(docker_client: Any, rtpengine_image: str) -> None:
    env = {**os.environ, "DOCKER_XMS": cli_path(), "DOCKER_XMS_PROFILE": "rtpengine"}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run_xms_container.sh"), "-c", "-i", rtpengine_image],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    name = next((line.split()[0] for line in proc.stdout.splitlines() if " runs " in line), "")
    try:
        assert proc.returncode == 0, proc.stderr
        assert "Real-time verified: yes" in proc.stdout
        shell = subprocess.run(
            ["bash", str(ROOT / "scripts" / "nsenter.sh"), name, "--", "cat", "/proc/1/comm"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert shell.stdout.strip() == "systemd"
    finally:
        if name:
            run_cli("rm", "-f", name)
