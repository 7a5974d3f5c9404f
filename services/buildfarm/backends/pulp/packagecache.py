"""The farm-side package cache on Pulp: each upstream Debian archive builds download from is a
pulp_deb remote with the ``on_demand`` policy, served by the farm's Pulp content app.

For an upstream (URL, suite, architecture) named ``<u>`` (``<suite>-<arch>-<hash of the URL>``)::

    remote        buildfarm/_cache/<u>   upstream URL, suite, ``main``, architecture; policy on_demand
    repository    buildfarm/_cache/<u>   one version per sync that changed the indexes
    distribution  _cache/<u>             the last good sync's publication

A sync downloads the upstream's indexes only (Release, Packages): Pulp records every package
with where to fetch it.  The first client asking for a ``.deb`` makes the content app fetch it
from the upstream, stream it and keep it in Pulp's storage; every later request, from any node
or step, is served from there.  So N nodes and N steps fetch each ``.deb`` from outside once, and
nothing a build never asks for is downloaded.

The build environments (:mod:`buildfarm.environments`) are made from the distribution, so the
apt sources inside every chroot made from them point at it too.  The work is the mirrors' own
(:class:`~buildfarm.backends.pulp.mirrors.PulpMirrors`: lease, bounded waits, forward-only
switch, labels ``buildfarm.class=mirror`` that retention keeps forever), under ``_cache`` instead
of ``_mirrors``: ``to_safe`` escapes ``_``, so no project, branch or configured mirror shares it.
Pulp writes its own Release file for the publication, unsigned: apt reads the line with
``[trusted=yes]`` (the chroots cannot hold a key path of the host).
"""

from __future__ import annotations

import hashlib
import logging

from buildfarm.backends.base import CacheRoute, DebianUpstream
from buildfarm.backends.pulp.client import PulpClient
from buildfarm.backends.pulp.mirrors import (
    CACHE_SEGMENT,
    DEFAULT_RETAIN_VERSIONS,
    DownloadPolicy,
    PulpMirrors,
)
from buildfarm.model.errors import ConflictError, ServiceUnavailableError
from buildfarm.model.settings import MirrorConfig

log = logging.getLogger(__name__)

BUSY_RETRY_SECONDS = 60.0
"""When another node syncs the upstream now: try again after this long (a sync takes minutes)."""


def cache_name(upstream: DebianUpstream) -> str:
    """The upstream's name in Pulp: readable, and distinct for two URLs of one suite."""
    digest = hashlib.sha256(upstream.url.rstrip("/").encode()).hexdigest()[:10]
    return f"{upstream.distribution}-{upstream.architecture}-{digest}"


class PulpPackageCache:
    """:class:`~buildfarm.backends.base.PackageCache` on the Pulp reached through ``client``.

    ``policy`` is ``on_demand`` in the farm; tests pass the others to show what it changes.
    """

    def __init__(
        self,
        client: PulpClient,
        content_origin: str,
        retain_versions: int = DEFAULT_RETAIN_VERSIONS,
        policy: DownloadPolicy = "on_demand",
    ) -> None:
        self.client = client
        self.content_origin = content_origin.rstrip("/")
        self.retain_versions = retain_versions
        self.policy: DownloadPolicy = policy

    def _mirrors(self, mirror: MirrorConfig) -> PulpMirrors:
        return PulpMirrors(
            self.client,
            self.content_origin,
            [mirror],
            self.retain_versions,
            policy=self.policy,
            segment=CACHE_SEGMENT,
        )

    @staticmethod
    def _mirror(upstream: DebianUpstream) -> MirrorConfig:
        return MirrorConfig(
            name=cache_name(upstream),
            url=upstream.url,
            distribution=upstream.distribution,
            components=list(upstream.components),
            architectures=[upstream.architecture],
        )

    def _route(self, mirrors: PulpMirrors, mirror: MirrorConfig) -> CacheRoute:
        return CacheRoute(mirror=f"[trusted=yes] {mirrors.source(mirror, signed=False).url}")

    def route(self, upstream: DebianUpstream) -> CacheRoute:
        """The distribution of ``upstream``, synced first if it has never been (the first sync
        of a whole Debian suite reads its ~60 000 package records: minutes, once)."""
        mirror = self._mirror(upstream)
        mirrors = self._mirrors(mirror)
        if mirror.name not in mirrors.usable():
            log.info("pulp: package cache of %s %s: first sync", upstream.url, upstream.distribution)
            self._sync(mirrors, mirror, upstream)
        return self._route(mirrors, mirror)

    def refresh(self, upstream: DebianUpstream) -> CacheRoute:
        mirror = self._mirror(upstream)
        mirrors = self._mirrors(mirror)
        self._sync(mirrors, mirror, upstream)
        return self._route(mirrors, mirror)

    def _sync(self, mirrors: PulpMirrors, mirror: MirrorConfig, upstream: DebianUpstream) -> None:
        """Sync; another node syncing the same upstream now is temporary (a step or a submission
        is tried again once its sync is done), never a failure of the build."""
        try:
            mirrors.sync(mirror)
        except ConflictError as exc:
            raise ServiceUnavailableError(
                f"the package cache of {upstream.url} {upstream.distribution} is being synced by "
                f"another node: {exc}",
                BUSY_RETRY_SECONDS,
            ) from exc
