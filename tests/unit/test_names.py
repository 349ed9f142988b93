from __future__ import annotations

import pytest

from docker_xms.domain.names import parse_ref
from docker_xms.errors import BadInput


@pytest.mark.parametrize(
    ("text", "repository", "tag"),
    [
        ("xms", "xms", "latest"),
        ("user/xms:5.0", "user/xms", "5.0"),
        ("localhost:5000/user/xms:v1", "localhost:5000/user/xms", "v1"),
        ("registry.example.com/a/b-c_d:1.2.3-rc", "registry.example.com/a/b-c_d", "1.2.3-rc"),
    ],
)
def test_valid_references(text: str, repository: str, tag: str) -> None:
    ref = parse_ref(text)
    assert (ref.repository, ref.tag) == (repository, tag)


@pytest.mark.parametrize("text", ["", "Bad Tag", "UPPER/case", "x:", "a//b", "x:tag with space", "-x"])
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(BadInput):
        parse_ref(text)


def test_digest_refused_where_a_tag_is_needed() -> None:
    with pytest.raises(BadInput, match="digest"):
        parse_ref("x@sha256:" + "a" * 64, allow_digest=False)
