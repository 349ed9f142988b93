"""The media port pool and the adopt setting: parsed, bounded, and where `-c` blocks come from."""

from __future__ import annotations

import pytest

from docker_xms.adapters.config import load_settings
from docker_xms.domain.pool import (
    DEFAULT_ADOPT,
    DEFAULT_MEDIA_PORT_POOL,
    allocation_block,
    holds,
    parse_adopt,
    parse_pool,
)
from docker_xms.errors import BadInput
from docker_xms.settings import Settings


def test_the_default_pool_holds_every_built_in_profiles_one_to_one_range_and_the_c_block() -> None:
    pool = parse_pool(DEFAULT_MEDIA_PORT_POOL)
    for low, high in ((20000, 20999), (30000, 30999), (49152, 53152), (57344, 57840)):
        assert holds(pool, low, high)
    assert allocation_block(pool, 32768) == (10000, 32767)
    assert not holds(pool, 22, 22)
    assert not holds(pool, 8222, 8222)
    assert (Settings().media_port_pool, Settings().adopt) == (DEFAULT_MEDIA_PORT_POOL, DEFAULT_ADOPT)


@pytest.mark.parametrize("text", ["80-90", "0-100", "20000-70000", "30000-20000", "all", "", "1023"])
def test_a_pool_below_1024_above_65535_or_malformed_is_refused(text: str) -> None:
    with pytest.raises(BadInput):
        parse_pool(text)


def test_ranges_merge_and_a_block_is_the_widest_stretch_below_the_ephemeral_range() -> None:
    pool = parse_pool("12000-12999,10000-11999,40000-50000")
    assert pool == ((10000, 12999), (40000, 50000))
    assert allocation_block(pool, 32768) == (10000, 12999)
    assert allocation_block(pool, 45000) == (40000, 44999)
    with pytest.raises(BadInput, match="no ports below 10000"):
        allocation_block(parse_pool("40000-50000"), 10000)


def test_adopt_takes_some_sources_or_none() -> None:
    assert parse_adopt("compose,swarm") == ("compose", "swarm")
    assert parse_adopt("none") == ()
    for bad in ("", "everything", "none,compose"):
        with pytest.raises(BadInput):
            parse_adopt(bad)


def test_the_settings_refuse_a_bad_pool_or_adopt_value_from_the_environment() -> None:
    assert load_settings({"DOCKER_XMS_MEDIA_PORT_POOL": "20000-29999"}).media_port_pool == "20000-29999"
    with pytest.raises(BadInput, match="DOCKER_XMS_MEDIA_PORT_POOL"):
        load_settings({"DOCKER_XMS_MEDIA_PORT_POOL": "22-22"})
    with pytest.raises(BadInput, match="DOCKER_XMS_ADOPT"):
        load_settings({"DOCKER_XMS_ADOPT": "all"})
