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
Pulp writes its own Release file for the publication, signed by the farm's signing service
(``pulp_signing_service``) as every build publication and mirror is: the route names the key as
``[signed-by=<signing_keyring>]`` and carries the public key, which the environments hold at that
path (:mod:`buildfarm.environments.mmdebstrap`), so apt checks the cache's indexes in every
chroot.  Without a signing service the publication is unsigned and the line says
``[trusted=yes]``; a cache published before signing was configured is synced again (signed) on
its next route.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import typing as t

from pulp_glue.core.context import PulpSigningServiceContext

from buildfarm.backends.base import CacheRoute, DebianUpstream
from buildfarm.backends.pulp.client import PulpClient
from buildfarm.backends.pulp.mirrors import (
    CACHE_SEGMENT,
    DEFAULT_RETAIN_VERSIONS,
    DownloadPolicy,
    PulpMirrors,
)
from buildfarm.model.errors import ConflictError, PermanentError, ServiceUnavailableError
from buildfarm.model.settings import DEFAULT_SIGNING_KEYRING, MirrorConfig

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
    ``signing_service``: the name of the Pulp signing service its publications are signed with
    (None: unsigned); ``keyring``: where apt keeps its public key (setting ``signing_keyring``).
    """

    def __init__(
        self,
        client: PulpClient,
        content_origin: str,
        retain_versions: int = DEFAULT_RETAIN_VERSIONS,
        policy: DownloadPolicy = "on_demand",
        *,
        signing_service: str | None = None,
        keyring: str = DEFAULT_SIGNING_KEYRING,
    ) -> None:
        self.client = client
        self.content_origin = content_origin.rstrip("/")
        self.retain_versions = retain_versions
        self.policy: DownloadPolicy = policy
        self.signing_service = signing_service
        self.keyring = keyring
        self._signing_record: dict[str, t.Any] | None = None
        self._lock = threading.Lock()

    def _signing(self) -> dict[str, t.Any]:
        """The signing service's record (href, public key), looked up once."""
        with self._lock:
            if self._signing_record is not None:
                return self._signing_record
        with self.client._errors(f"looking up the signing service {self.signing_service!r}"):
            found = self.client._first(PulpSigningServiceContext(self.client.ctx), name=self.signing_service)
        if found is None:
            raise PermanentError(
                f"Pulp has no signing service {self.signing_service!r} (setting pulp_signing_service): "
                "register it with pulpcore-manager add-signing-service --class deb:AptReleaseSigningService"
            )
        with self._lock:
            self._signing_record = dict(found)
        return self._signing_record

    def _signing_href(self) -> str:
        return str(self._signing()["pulp_href"])

    def _mirrors(self, mirror: MirrorConfig) -> PulpMirrors:
        return PulpMirrors(
            self.client,
            self.content_origin,
            [mirror],
            self.retain_versions,
            signing_service=self._signing_href if self.signing_service is not None else None,
            keyring=self.keyring,
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
        served = mirrors.usable().get(mirror.name)
        if served is None or served.signed_by is None:
            return CacheRoute(mirror=f"[trusted=yes] {mirrors.source(mirror, signed=False).url}")
        return CacheRoute(mirror=f"[signed-by={served.signed_by}] {served.url}", key=self._public_key())

    def _public_key(self) -> str:
        return str(self._signing()["public_key"])

    def route(self, upstream: DebianUpstream) -> CacheRoute:
        """The distribution of ``upstream``, synced first if it has never been (the first sync
        of a whole Debian suite reads its ~60 000 package records: minutes, once), or if it was
        published unsigned and a signing service is configured now."""
        mirror = self._mirror(upstream)
        mirrors = self._mirrors(mirror)
        served = mirrors.usable().get(mirror.name)
        if served is None:
            log.info("pulp: package cache of %s %s: first sync", upstream.url, upstream.distribution)
            self._sync(mirrors, mirror, upstream)
        elif self.signing_service is not None and served.signed_by is None:
            log.info(
                "pulp: package cache of %s %s: published again, signed", upstream.url, upstream.distribution
            )
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
