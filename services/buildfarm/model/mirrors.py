"""3rd-party mirror configurations checked before anything is asked of Pulp or apt.

A mirror's name becomes a Pulp repository name and a URL path segment (via
:func:`buildfarm.model.names.to_safe`); its suite, components and architectures go into an apt
sources line (``deb <url> <suite> <component>...``, split on blanks) and into the URLs apt and
Pulp fetch (``dists/<suite>/<component>/binary-<arch>/``).  So each must be one token of the
characters Debian archives use, and the URL one plain http(s) URL.  Flat repositories (a suite
ending in ``/``) are refused: a structured Pulp publication cannot reproduce them.

A mirror may name its upstream's OpenPGP public key (``signed_by``): the path of an
ASCII-armored ``.asc`` file, as apt's own ``signed-by=`` option takes it.  A path rather than
the key's text, because the local profile hands it to apt as is and a key is a file vendors
publish; it is read (and must hold exactly a public key block) whenever the mirror is checked,
so a missing or wrong file stops the farm at start with one line naming the mirror.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from buildfarm.model import names
from buildfarm.model.errors import NotFoundError, PermanentError
from buildfarm.model.settings import MirrorConfig

MAX_FIELD_LENGTH = 100
"""Longest suite, component or architecture accepted (Debian's are under 30 characters)."""

_SUITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_-]*(/[A-Za-z0-9][A-Za-z0-9.+~_-]*)*")
"""``bookworm``, ``bookworm-updates``, ``stable/updates``: segments separated by single slashes."""
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_-]*")
_ARCHITECTURE = re.compile(r"[a-z0-9][a-z0-9-]*")
"""Debian architecture names (``amd64``, ``arm64``, ``kfreebsd-amd64``); ``all`` comes with every one."""
MAX_KEY_BYTES = 1 << 20
"""Largest key file read (1 MiB): a repository's signing keys are a few KB, Debian's keyring ~300 KB."""
PUBLIC_KEY_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
PUBLIC_KEY_END = "-----END PGP PUBLIC KEY BLOCK-----"


class MirrorConfigError(PermanentError):
    """A configured mirror cannot be carried by Pulp or apt; the message names it and the field."""


def check_mirror(mirror: MirrorConfig) -> MirrorConfig:
    """Return ``mirror`` if Pulp and apt can carry it, else raise one clear error naming it."""
    names.check_simple_name(mirror.name, "mirror")

    def bad(field: str, value: object, reason: str) -> MirrorConfigError:
        return _bad(mirror, field, value, reason)

    parts = urlsplit(mirror.url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise bad("url", mirror.url, "is not an http:// or https:// URL with a host")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in mirror.url):
        raise bad("url", mirror.url, "contains a blank or a control character")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise bad("url", mirror.url, "has a query, a fragment or credentials (put credentials in Pulp)")
    if mirror.distribution.endswith("/"):
        raise bad("distribution", mirror.distribution, "is a flat repository, which cannot be mirrored")
    _check_token(mirror, "distribution", mirror.distribution, _SUITE)
    if not mirror.components:
        raise bad("components", mirror.components, "is empty")
    if not mirror.architectures:
        raise bad("architectures", mirror.architectures, "is empty")
    for component in mirror.components:
        _check_token(mirror, "component", component, _COMPONENT)
    for architecture in mirror.architectures:
        _check_token(mirror, "architecture", architecture, _ARCHITECTURE)
    for field, values in (("components", mirror.components), ("architectures", mirror.architectures)):
        if len(set(values)) != len(values):
            raise bad(field, values, "lists the same value twice")
    signing_key(mirror)
    return mirror


def signing_key(mirror: MirrorConfig) -> str | None:
    """The armored public key text of ``mirror.signed_by`` (None when unset); one clear error if bad."""
    if mirror.signed_by is None:
        return None
    path = mirror.signed_by

    def bad(reason: str) -> MirrorConfigError:
        return _bad(mirror, "signed_by", path, reason)

    if any(c.isspace() or c == "]" or ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise bad("contains a blank, ']' or a control character (it goes into an apt sources line)")
    if not PurePosixPath(path).is_absolute():
        raise bad("is not an absolute path")
    if not path.endswith(".asc"):
        raise bad("is not an ASCII-armored key file ending in .asc (gpg --armor --export KEYID > key.asc)")
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise bad(f"cannot be read: {exc.strerror or exc}") from exc
    if len(data) > MAX_KEY_BYTES:
        raise bad(f"is larger than {MAX_KEY_BYTES >> 20} MiB: not a repository's public key")
    text = data.decode("ascii", errors="replace")
    if "PRIVATE KEY BLOCK" in text:
        raise bad("holds a private key: give the upstream's public key only")
    if PUBLIC_KEY_BEGIN not in text or PUBLIC_KEY_END not in text:
        raise bad(f"holds no ASCII-armored public key ({PUBLIC_KEY_BEGIN})")
    return text


def _bad(mirror: MirrorConfig, field: str, value: object, reason: str) -> MirrorConfigError:
    return MirrorConfigError(f"mirror {mirror.name!r}: {field} {value!r} {reason}")


def _check_token(mirror: MirrorConfig, field: str, value: str, pattern: re.Pattern[str]) -> None:
    if not value or len(value) > MAX_FIELD_LENGTH or not pattern.fullmatch(value):
        raise _bad(mirror, field, value, f"is not a valid Debian {field} name")


def check_mirrors(mirrors: list[MirrorConfig]) -> list[MirrorConfig]:
    """Check every mirror and that no two share a name (they would share a repository)."""
    seen: set[str] = set()
    for mirror in mirrors:
        check_mirror(mirror)
        if mirror.name in seen:
            raise MirrorConfigError(f"two mirrors are named {mirror.name!r}")
        seen.add(mirror.name)
    return mirrors


def find_mirror(mirrors: list[MirrorConfig], name: str) -> MirrorConfig:
    """The configured mirror called ``name``; NotFoundError (naming the known ones) otherwise."""
    for mirror in mirrors:
        if mirror.name == name:
            return check_mirror(mirror)
    known = ", ".join(m.name for m in mirrors) or "none is configured (setting mirrors)"
    raise NotFoundError(f"mirror {name!r} is not configured; known mirrors: {known}")
