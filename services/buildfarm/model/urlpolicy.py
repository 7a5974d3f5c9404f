"""Which URLs the farm may fetch from on a user's behalf: one policy for every one of them.

A manifest's ``git`` URL, an image context's, a schedule's, an upstream tarball or ``.dsc``:
the farm fetches each *as itself*, from inside its own network, with its own privileges.  Left
open, a URL is a way to read the farm host (``file:///etc``, a bare path, ``ext::`` which runs
a command) or to reach services only the farm can reach (``http://127.0.0.1:6379``, the cloud
metadata service at ``169.254.169.254``, a database on ``10.0.0.5``), and to learn which ports
are open from the errors.  So every such URL passes two checks:

* :func:`check_url_syntax`, offline, when a manifest is validated: one network URL (``https``,
  ``http``, ``git`` or ``ssh``) with a host, nothing option-shaped (a leading ``-`` would be
  read by git as an option), no blanks or control characters;
* :func:`check_url`, just before fetching: the scheme is one the admin allows
  (``fetch_allow_schemes``, ``https`` only by default) and *every* address the host resolves
  to is public, unless the admin names the host or its network in ``fetch_allow_hosts``.
  Loopback, private, link-local, shared, multicast, reserved and unspecified addresses are
  refused, also when hidden in IPv4-mapped, 6to4, Teredo or NAT64 IPv6 addresses.

A refused URL gets the same message whatever the reason (loopback or private, port open or
closed): no connection is attempted, so nothing about the target leaks.  The checked addresses
are returned so the caller can pin them (git's ``http.curloptResolve``): a name that resolves
to a public address for the check and to ``127.0.0.1`` for the fetch gains nothing.

Credentials in a URL (``https://user:token@host/``) are allowed but never shown:
:func:`redact_url` and :func:`redact_text` hide them in every message.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from buildfarm.model.errors import PermanentError, TemporaryError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NETWORK_SCHEMES: dict[str, int] = {"https": 443, "http": 80, "git": 9418, "ssh": 22}
"""Schemes the farm can ever fetch from, with their default ports; ``file``, ``ext`` and local
paths are not among them whatever the settings say."""
DEFAULT_ALLOWED_SCHEMES = ("https",)
"""Encrypted and authenticated: plain ``http``/``git`` and ``ssh`` (which needs keys on the farm)
only where an admin allows them."""
MAX_URL_LENGTH = 2048
"""Longer than any real repository URL; bounds what is stored and logged."""
RESOLVE_RETRY_SECONDS = 30.0
"""A host name that does not resolve now may after a DNS blip: retry after this long."""
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


class UrlRefusedError(PermanentError):
    """A URL the farm will not fetch from; the message says which rule, never what is there."""


def redact_url(url: str) -> str:
    """``url`` with its user information (``user:password@`` or a token) replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", url)


def redact_text(text: str) -> str:
    """Every URL's user information in ``text`` (a tool's error output) replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", text)


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise UrlRefusedError(f"{redact_url(url)!r} is not a valid URL: {exc}") from exc
    return parts


def check_url_syntax(url: str) -> str:
    """Return ``url`` if it is one network URL the farm could fetch from, else raise one clear
    error (offline: neither the settings nor DNS are consulted)."""
    shown = redact_url(url)
    if not url:
        raise UrlRefusedError("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefusedError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if url.startswith("-"):
        raise UrlRefusedError(f"{shown!r} starts with '-' (it would be read as an option)")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UrlRefusedError(f"{shown!r} contains a blank or a control character")
    parts = _split(url)
    scheme = parts.scheme.lower()
    if scheme not in NETWORK_SCHEMES or not url.lower().startswith(f"{scheme}://"):
        raise UrlRefusedError(
            f"{shown!r} is not a network URL: give https://host/path (file://, local paths, "
            "scp-style host:path and git transports such as ext:: are refused)"
        )
    host = parts.hostname
    if not host:
        raise UrlRefusedError(f"{shown!r} names no host")
    if host.startswith("-") or (parts.username or "").startswith("-"):
        raise UrlRefusedError(f"{shown!r}: its host or user starts with '-' (it would be read as an option)")
    if parts.fragment:
        raise UrlRefusedError(f"{shown!r} has a fragment ('#...')")
    return url


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True if ``address`` is a unicast address of the public internet."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and not is_public(embedded):
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


@dataclass(frozen=True)
class UrlPolicy:
    """The admin's choices: allowed schemes, and hosts or networks allowed although not public.

    ``hosts`` holds lower-case names (``git.corp.example``; ``.corp.example`` also matches every
    name below it), ``networks`` addresses and networks (``127.0.0.1``, ``10.0.0.0/8``).
    """

    schemes: frozenset[str] = frozenset(DEFAULT_ALLOWED_SCHEMES)
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def parse(cls, schemes: Iterable[str], hosts: Iterable[str]) -> UrlPolicy:
        """The policy of the settings ``fetch_allow_schemes`` and ``fetch_allow_hosts``; one clear
        error naming a bad entry."""
        wanted = frozenset(s.strip().lower() for s in schemes if s.strip())
        unknown = sorted(wanted - NETWORK_SCHEMES.keys())
        if unknown:
            raise PermanentError(
                f"setting fetch_allow_schemes: {', '.join(unknown)} cannot be allowed "
                f"(choose among {', '.join(NETWORK_SCHEMES)})"
            )
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (h.strip().lower() for h in hosts):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if not re.fullmatch(r"\.?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", entry):
                raise PermanentError(
                    f"setting fetch_allow_hosts: {entry!r} is neither a host name, an address "
                    "nor a network (10.0.0.0/8)"
                )
            names.add(entry)
        return cls(schemes=wanted, hosts=frozenset(names), networks=tuple(networks))

    def names_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.hosts or any(name.startswith(".") and host.endswith(name) for name in self.hosts)

    def allows_address(self, address: IPAddress) -> bool:
        if is_public(address):
            return True
        return any(address.version == net.version and address in net for net in self.networks)


@dataclass(frozen=True)
class AllowedUrl:
    """A URL that passed the policy, with the addresses it was checked at (pin them)."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, as git and httpx use it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_url(
    url: str,
    policy: UrlPolicy,
    resolve: Callable[[str, int], list[str]] = resolve_host,
) -> AllowedUrl:
    """Return ``url`` checked against ``policy`` (syntax, scheme, every resolved address).

    Raises :class:`UrlRefusedError` (the same message for every forbidden host) or, when the
    name does not resolve right now, :class:`~buildfarm.model.errors.TemporaryError`.
    """
    check_url_syntax(url)
    parts = _split(url)
    scheme = parts.scheme.lower()
    shown = redact_url(url)
    if scheme not in policy.schemes:
        raise UrlRefusedError(
            f"{shown!r}: {scheme}:// URLs are not allowed here (allowed: "
            f"{', '.join(sorted(policy.schemes)) or 'none'}; an admin may allow others with "
            "fetch_allow_schemes)"
        )
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or NETWORK_SCHEMES[scheme]
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise TemporaryError(f"{shown!r}: cannot resolve host {host!r}", RESOLVE_RETRY_SECONDS) from exc
    parsed: list[IPAddress] = []
    for text in addresses:
        try:
            parsed.append(ipaddress.ip_address(text.split("%", 1)[0]))
        except ValueError:
            continue
    named = policy.names_host(host)
    if not parsed or not (named or all(policy.allows_address(a) for a in parsed)):
        raise UrlRefusedError(
            f"{shown!r}: the farm does not fetch from this host (only public hosts; an admin may "
            "allow others with fetch_allow_hosts)"
        )
    return AllowedUrl(url, scheme, host, port, tuple(str(a) for a in parsed))
