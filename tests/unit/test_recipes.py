from __future__ import annotations

from docker_xms.adapters.profile_store import load_profile
from docker_xms.domain import recipes


def test_finish_dockerfile_sets_systemd_essentials() -> None:
    text = recipes.finish_dockerfile("sha256:abc", {"io.docker-xms.base": "debian12"})
    lines = text.splitlines()
    assert lines[0] == "FROM sha256:abc"
    assert 'ENV container="docker"' in lines
    assert "STOPSIGNAL SIGRTMIN+3" in lines
    assert 'CMD ["/sbin/init"]' in lines


def test_profile_ports_become_expose_lines() -> None:
    xms = load_profile("xms")
    lines = recipes.expose_lines(xms.ports)
    assert "EXPOSE 5060/udp" in lines
    assert "EXPOSE 22/tcp" in lines


def test_registry_dockerfiles_install_systemd() -> None:
    for distro in recipes.DISTROS:
        text = recipes.registry_base_dockerfile(distro)
        assert text.startswith(f"FROM {recipes.REGISTRY_BASES[distro]}")
        assert "systemd" in text
        assert "STOPSIGNAL SIGRTMIN+3" in text


def test_recipe_hash_changes_with_content() -> None:
    assert recipes.recipe_hash({"a": 1}) == recipes.recipe_hash({"a": 1})
    assert recipes.recipe_hash({"a": 1}) != recipes.recipe_hash({"a": 2})
