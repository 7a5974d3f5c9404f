"""Check a 3rd-party APT repository the way apt will read it: Release, then each Packages index.

The local profile has no Pulp: its builds read a configured mirror's upstream directly, so
"syncing" a mirror there means proving the upstream answers with what the configuration names
(the suite's Release file lists every component and architecture, each Packages index is there
and matches its SHA256 in Release) and counting its packages.  Every request has a timeout.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import time
from collections.abc import Callable

import httpx
from debian.deb822 import Release

from buildfarm.backends.base import AptSource, MirrorStatus
from buildfarm.model.errors import PermanentError, ServiceUnavailableError
from buildfarm.model.mirrors import check_mirror
from buildfarm.model.settings import MirrorConfig

HTTP_TIMEOUT_SECONDS = 30.0
"""Bound on each request (connect and each read): a mirror slower than this is taken as down."""
_UNPACK: dict[str, Callable[[bytes], bytes]] = {
    ".xz": lzma.decompress,
    ".gz": gzip.decompress,
    ".bz2": bz2.decompress,
    "": lambda data: data,
}
"""Index compressions apt reads, in the order we prefer to fetch them (smallest first)."""


def upstream_source(mirror: MirrorConfig) -> AptSource:
    """The apt line of the upstream itself (``[trusted=yes]``: the farm does not hold its key)."""
    return AptSource(
        url=mirror.url.rstrip("/") + "/",
        suite=mirror.distribution,
        components=tuple(mirror.components),
        trusted=True,
    )


def check_upstream(mirror: MirrorConfig, timeout: float = HTTP_TIMEOUT_SECONDS) -> MirrorStatus:
    """Read the mirror's Release and Packages indexes; one clear error naming the mirror if wrong."""
    check_mirror(mirror)
    started = time.monotonic()
    base = f"{mirror.url.rstrip('/')}/dists/{mirror.distribution}"
    with httpx.Client(timeout=timeout, follow_redirects=True) as http:
        release = Release(_get(http, mirror, f"{base}/Release"))
        listed = {entry["name"]: entry for entry in release.get("SHA256", [])}
        declared = {
            "components": set(release.get("Components", "").split()),
            "architectures": set(release.get("Architectures", "").split()),
        }
        for field, wanted in (("components", mirror.components), ("architectures", mirror.architectures)):
            missing = sorted(set(wanted) - declared[field])
            if missing and declared[field]:
                raise PermanentError(
                    f"mirror {mirror.name!r}: {base}/Release does not list {field} {', '.join(missing)}"
                )
        packages = 0
        for component in mirror.components:
            for architecture in mirror.architectures:
                packages += _count_packages(http, mirror, base, f"{component}/binary-{architecture}", listed)
    return MirrorStatus(
        name=mirror.name,
        source=upstream_source(mirror).line(),
        packages=packages,
        version=str(release.get("Date", "")),
        seconds=time.monotonic() - started,
    )


def _count_packages(
    http: httpx.Client, mirror: MirrorConfig, base: str, where: str, listed: dict[str, dict[str, str]]
) -> int:
    for suffix, unpack in _UNPACK.items():
        entry = listed.get(f"{where}/Packages{suffix}")
        if entry is None:
            continue
        url = f"{base}/{where}/Packages{suffix}"
        data = _get(http, mirror, url)
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise PermanentError(f"mirror {mirror.name!r}: {url} does not match its SHA256 in Release")
        try:
            text = unpack(data)
        except (OSError, lzma.LZMAError, EOFError) as exc:
            raise PermanentError(f"mirror {mirror.name!r}: {url} cannot be unpacked: {exc}") from exc
        return sum(1 for line in text.splitlines() if line.startswith(b"Package:"))
    raise PermanentError(f"mirror {mirror.name!r}: {base}/Release lists no Packages index for {where}")


def _get(http: httpx.Client, mirror: MirrorConfig, url: str) -> bytes:
    try:
        response = http.get(url)
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(
            f"mirror {mirror.name!r}: its upstream cannot be reached ({url}): {exc}", 30.0
        ) from exc
    if response.status_code >= 500:
        raise ServiceUnavailableError(
            f"mirror {mirror.name!r}: its upstream answered HTTP {response.status_code} for {url}", 30.0
        )
    if response.status_code != 200:
        raise PermanentError(f"mirror {mirror.name!r}: {url} answered HTTP {response.status_code}")
    return response.content
