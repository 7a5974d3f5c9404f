"""Check a 3rd-party APT repository the way apt will read it: Release, then each Packages index.

The local profile has no Pulp: its builds read a configured mirror's upstream directly, so
"syncing" a mirror there means proving the upstream answers with what the configuration names
(the suite's Release file lists every component and architecture, each Packages index is there
and matches its SHA256 in Release) and counting its packages.  Every request has a timeout.

A mirror with a key (``signed_by``) is checked the way apt checks it: the signed ``InRelease``
(or, where there is none, ``Release`` with its detached ``Release.gpg``) must verify with
``gpgv`` against that key alone, and only the text the signature covers is read; its apt line
is then ``[signed-by=<key>]`` instead of ``[trusted=yes]``, so apt refuses a tampered upstream too.

A mirror's own host is the admin's choice (it may well be an internal one), but a redirect is
the upstream's: every request after the first passes the farm's URL policy
(:func:`fetch_client`, which any fetch of a URL from outside should use).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import lzma
import subprocess
import tempfile
import time
import typing as t
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from debian.deb822 import Release

from buildfarm.backends.base import AptSource
from buildfarm.model.errors import PermanentError, ServiceUnavailableError
from buildfarm.model.mirrors import check_mirror, signing_key
from buildfarm.model.settings import MirrorConfig
from buildfarm.model.urlpolicy import UrlPolicy, UrlRefusedError, check_url
from buildfarm_client.models import MirrorSyncOut

HTTP_TIMEOUT_SECONDS = 30.0
"""Bound on each request (connect and each read): a mirror slower than this is taken as down."""
_UNPACK: dict[str, Callable[[bytes], bytes]] = {
    ".xz": lzma.decompress,
    ".gz": gzip.decompress,
    ".bz2": bz2.decompress,
    "": lambda data: data,
}
"""Index compressions apt reads, in the order we prefer to fetch them (smallest first)."""
GPG_TIMEOUT_SECONDS = 30.0
"""Bound on each gpg/gpgv run (they take milliseconds on a Release file)."""


def upstream_source(mirror: MirrorConfig) -> AptSource:
    """The apt line of the upstream itself: ``[signed-by=<key>]``, or ``[trusted=yes]`` without a key."""
    return AptSource(
        url=mirror.url.rstrip("/") + "/",
        suite=mirror.distribution,
        components=tuple(mirror.components),
        trusted=mirror.signed_by is None,
        signed_by=mirror.signed_by,
    )


MAX_REDIRECTS = 5
"""Redirects followed per request (httpx's default is 20): a mirror moves once, not five times."""


def fetch_client(
    policy: UrlPolicy, timeout: float = HTTP_TIMEOUT_SECONDS, trusted: str | None = None
) -> httpx.Client:
    """An HTTP client whose every request, redirects included, passes ``policy`` first.

    ``trusted`` is a URL an admin configured (a mirror): requests to its host and port are not
    checked, since the admin chose them. A refused request raises :class:`UrlRefusedError`.
    """
    own = urlsplit(trusted) if trusted else None

    def police(request: httpx.Request) -> None:
        url = str(request.url)
        if own is not None and (request.url.host, request.url.port) == (own.hostname, own.port):
            return
        check_url(url, policy)

    return httpx.Client(
        timeout=timeout,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        event_hooks={"request": [police]},
    )


def check_upstream(
    mirror: MirrorConfig, timeout: float = HTTP_TIMEOUT_SECONDS, policy: UrlPolicy | None = None
) -> MirrorSyncOut:
    """Read the mirror's Release and Packages indexes; one clear error naming the mirror if wrong.

    The mirror's own URL is the admin's; where it redirects must pass ``policy`` (default: the
    farm's default, public hosts over https)."""
    check_mirror(mirror)
    started = time.monotonic()
    base = f"{mirror.url.rstrip('/')}/dists/{mirror.distribution}"
    hosts = policy or UrlPolicy()  # apt mirrors are plain http as often as not: only hosts matter
    hosts = dataclasses.replace(hosts, schemes=hosts.schemes | {"http", "https"})
    with fetch_client(hosts, timeout, trusted=mirror.url) as http:
        release = Release(_release(http, mirror, base))
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
    return MirrorSyncOut(
        name=mirror.name,
        source=upstream_source(mirror).line(),
        packages=packages,
        version=str(release.get("Date", "")),
        seconds=time.monotonic() - started,
    )


def read_release(http: httpx.Client, mirror: MirrorConfig, base: str) -> Release:
    """The suite's Release (``base`` is ``<url>/dists/<suite>``), its signature checked with the
    mirror's key when it has one."""
    return Release(_release(http, mirror, base))


def _release(http: httpx.Client, mirror: MirrorConfig, base: str) -> bytes:
    """The suite's Release text; with a key, only what a good signature by that key covers."""
    key = signing_key(mirror)
    if key is None:
        return _get(http, mirror, f"{base}/Release")
    inrelease = _get(http, mirror, f"{base}/InRelease", missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="buildfarm-gpgv-") as tmp:
        work = Path(tmp)
        keyring = work / "signed-by.gpg"
        _gpg(
            mirror, ["gpg", "--batch", "--homedir", tmp, "--dearmor", "--output", str(keyring)], key.encode()
        )
        if inrelease is not None:
            (work / "InRelease").write_bytes(inrelease)
            verify = ["--output", str(work / "Release"), str(work / "InRelease")]
            _verify(mirror, f"{base}/InRelease", keyring, verify)
            return (work / "Release").read_bytes()
        release = _get(http, mirror, f"{base}/Release")
        (work / "Release").write_bytes(release)
        (work / "Release.gpg").write_bytes(_get(http, mirror, f"{base}/Release.gpg"))
        _verify(mirror, f"{base}/Release", keyring, [str(work / "Release.gpg"), str(work / "Release")])
        return release


def _verify(mirror: MirrorConfig, url: str, keyring: Path, args: list[str]) -> None:
    command = ["gpgv", "--keyring", str(keyring), *args]
    result = _gpg(mirror, command, b"", check=False)
    if result.returncode != 0:
        said = [
            line.removeprefix("gpgv:").strip() for line in result.stderr.decode(errors="replace").splitlines()
        ]
        reason = next((line for line in reversed(said) if line), f"exit status {result.returncode}")
        raise PermanentError(
            f"mirror {mirror.name!r}: {url} is not signed by the key in {mirror.signed_by}: {reason}"
        )


def _gpg(
    mirror: MirrorConfig, command: list[str], stdin: bytes, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    try:
        result = subprocess.run(
            command, input=stdin, capture_output=True, timeout=GPG_TIMEOUT_SECONDS, check=False
        )
    except FileNotFoundError as exc:
        raise PermanentError(
            f"mirror {mirror.name!r}: {command[0]} is not installed (ops/bootstrap/apt-deps.sh installs it)"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise PermanentError(
            f"mirror {mirror.name!r}: {command[0]} took over {GPG_TIMEOUT_SECONDS:.0f} s"
        ) from exc
    if check and result.returncode != 0:
        said = " ".join(result.stderr.decode(errors="replace").split())[:300]
        raise PermanentError(
            f"mirror {mirror.name!r}: signed_by {mirror.signed_by} is not a usable key: {said}"
        )
    return result


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


@t.overload
def _get(http: httpx.Client, mirror: MirrorConfig, url: str) -> bytes: ...


@t.overload
def _get(http: httpx.Client, mirror: MirrorConfig, url: str, missing_ok: bool) -> bytes | None: ...


def _get(http: httpx.Client, mirror: MirrorConfig, url: str, missing_ok: bool = False) -> bytes | None:
    """``url``'s body; None for a 404 when ``missing_ok``; one clear error naming the mirror otherwise."""
    try:
        response = http.get(url)
    except UrlRefusedError as exc:
        raise PermanentError(
            f"mirror {mirror.name!r}: {url} redirects to a host the farm does not fetch from"
        ) from exc
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(
            f"mirror {mirror.name!r}: its upstream cannot be reached ({url}): {exc}", 30.0
        ) from exc
    if response.status_code >= 500:
        raise ServiceUnavailableError(
            f"mirror {mirror.name!r}: its upstream answered HTTP {response.status_code} for {url}", 30.0
        )
    if missing_ok and response.status_code == 404:
        return None
    if response.status_code != 200:
        raise PermanentError(f"mirror {mirror.name!r}: {url} answered HTTP {response.status_code}")
    return response.content
