"""The package cache as an HTTP proxy in front of the upstreams (local profile: apt-cacher-ng).

``buildfarm start`` runs Debian's apt-cacher-ng and sets ``apt_proxy`` to it (buildfarm.local);
apt keeps the upstream's URL in its sources and fetches through the proxy, which keeps each
``.deb`` after the first download.  With no proxy set, apt fetches straight from the upstream.
Nothing needs making or refreshing: the proxy checks the upstream's indexes itself.
"""

from __future__ import annotations

from buildfarm.backends.base import CacheRoute, DebianUpstream


class ProxyPackageCache:
    """:class:`~buildfarm.backends.base.PackageCache` through the HTTP proxy ``proxy`` (None: none)."""

    def __init__(self, proxy: str | None) -> None:
        self.proxy = proxy

    def route(self, upstream: DebianUpstream) -> CacheRoute:
        return CacheRoute(mirror=upstream.url, proxy=self.proxy)

    def refresh(self, upstream: DebianUpstream) -> CacheRoute:
        return self.route(upstream)
