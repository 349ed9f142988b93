"""Image references as the engine accepts them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from docker_xms.errors import BadInput

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_REFERENCE = re.compile(
    rf"^(?:(?P<host>{_HOST})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


@dataclass(frozen=True)
class ImageRef:
    repository: str
    tag: str
    digest: str = ""

    def __str__(self) -> str:
        return f"{self.repository}@{self.digest}" if self.digest else f"{self.repository}:{self.tag}"


def parse_ref(text: str, allow_digest: bool = True) -> ImageRef:
    """Split an image reference into repository and tag (default `latest`), refusing malformed ones."""
    match = _REFERENCE.match(text)
    if not text or len(text) > 255 or match is None:
        raise BadInput(
            f"{text!r} is not a valid image name: use lower-case NAME[:TAG], e.g. docker-xms/rtpengine:latest."
        )
    host = match.group("host")
    # "user/name" has no registry host: a first component is a host only if it has '.' or ':' or is localhost.
    path = match.group("path")
    if host and not ("." in host or ":" in host or host == "localhost"):
        if host.lower() != host:
            raise BadInput(f"{text!r} is not a valid image name: repository names must be lower-case.")
        path = f"{host}/{path}"
        host = None
    repository = f"{host}/{path}" if host else path
    digest = match.group("digest") or ""
    if digest and not allow_digest:
        raise BadInput(f"{text!r} names a digest; give a tag instead.")
    return ImageRef(repository, match.group("tag") or ("" if digest else "latest"), digest)
