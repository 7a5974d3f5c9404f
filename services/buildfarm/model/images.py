"""Where a build's images go in the registry, and the registry-safe form of farm names.

Every build pushes its images under its own namespace::

    <registry host:port>/<project>/<branch>/<build id>/<image name>:latest

so two builds (or two branches) never overwrite each other's images, a Dockerfile can start
``FROM ${BUILDFARM_IMAGE_PREFIX}/<earlier image>`` and retention can drop one build's images
by prefix.  Registry path components are stricter than farm names (lowercase, no ``/``, no
leading or trailing separator), so project and branch are escaped reversibly: every character
other than ``[a-z0-9]`` becomes ``_xx`` (hex of its UTF-8 bytes).  ``_`` followed by two hex
digits never contains ``__``, so a name whose escape would start with ``_`` gets ``x_`` in front
(making ``x__...``) without ever clashing with another name's escape.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from buildfarm.model.errors import PermanentError

IMAGE_TAG = "latest"
_PLAIN = re.compile(r"[a-z0-9]")


def registry_component(name: str) -> str:
    """One valid, injective registry path component for a farm name (project, branch)."""
    out: list[str] = []
    for char in name:
        if _PLAIN.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"_{byte:02x}" for byte in char.encode("utf-8"))
    escaped = "".join(out)
    return "x_" + escaped if escaped.startswith("_") else escaped


def registry_host(registry_url: str | None) -> str:
    """``host:port`` of the farm's registry from its URL (``http://127.0.0.1:5000`` or a bare host)."""
    if not registry_url:
        raise PermanentError(
            "image steps need a container registry: set registry_url (BUILDFARM_REGISTRY_URL)"
        )
    host = urlsplit(registry_url).netloc if "://" in registry_url else registry_url.strip("/")
    if not host or "/" in host:
        raise PermanentError(f"registry_url {registry_url!r} is not a registry address")
    return host


def registry_insecure(registry_url: str) -> bool:
    """Plain http registries (the local profile's; a bare host:port means http) are pushed to
    without TLS verification."""
    return not registry_url.startswith("https://")


def image_prefix(registry_url: str | None, project: str, branch: str, build_id: int) -> str:
    """``BUILDFARM_IMAGE_PREFIX`` of a build: its namespace in the registry."""
    return (
        f"{registry_host(registry_url)}/{registry_component(project)}/{registry_component(branch)}/{build_id}"
    )


def image_destination(prefix: str, image_name: str) -> str:
    return f"{prefix}/{image_name}:{IMAGE_TAG}"


def split_reference(reference: str) -> tuple[str, str, str]:
    """``host/repo/path:tag`` or ``host/repo@sha256:...`` -> (host, repository, tag or digest)."""
    host, _, rest = reference.partition("/")
    if "@" in rest:
        repository, _, ref = rest.partition("@")
    else:
        repository, _, ref = rest.rpartition(":")
    if not host or not repository or not ref:
        raise PermanentError(f"{reference!r} is not an image reference with a registry, a path and a tag")
    return host, repository, ref
