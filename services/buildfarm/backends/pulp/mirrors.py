"""3rd-party Debian repositories mirrored into Pulp: a deb remote, a repository, a distribution.

For a configured mirror ``<m>`` (``to_safe`` name)::

    remote        buildfarm/_mirrors/<m>   url, distributions, components, architectures; policy immediate
    repository    buildfarm/_mirrors/<m>   one version per sync that changed something
    distribution  _mirrors/<m>             bound to the publication of the last good sync

All three carry the labels ``buildfarm.class=mirror`` and ``buildfarm.mirror=<m>``: the farm's
retention keeps class ``mirror`` forever, while Pulp keeps only ``mirror_retain_versions``
versions of the repository, so a mirror synced daily does not grow without bound.  Pulp never
deletes the version a distribution serves and does not count it against ``retain_repo_versions``,
so the repository is given one less: after a sync the served (newest) version and the
``mirror_retain_versions - 1`` before it remain.
``_mirrors`` cannot be a project's base path (``to_safe`` escapes ``_``), so no build
distribution ever overlaps a mirror's.

A sync is Pulp's own ``mirror`` sync (the version holds exactly what upstream lists now), then a
structured publication of the new version, then one update of the distribution to it: apt sees
the old publication until the new one is complete and the distribution is switched, never a
half-synced state.  The distribution exists only after a first good sync, so
:meth:`PulpMirrors.usable` lists only mirrors builds can use.  Every wait is bounded by the
task timeout; an upstream that cannot be reached is a ServiceUnavailableError naming the mirror.

With a key (``signed_by``) the remote carries it as ``gpgkey``: pulp_deb then accepts only an
``InRelease`` or ``Release`` + ``Release.gpg`` that key signed, and a sync that finds none
fails (one line naming the mirror) before any version is made, so nothing new is published.
Pulp writes its own Release for the publication: with the farm's signing service
(``pulp_signing_service``) it is signed by the farm's key like every build publication, and
the mirror's line says ``[signed-by=<keyring>]`` (the upstream's signature was Pulp's check at
sync; apt checks the farm's).  Without one the publication is unsigned and the line says
``[trusted=yes]``.  A mirror last synced before signing was configured serves an unsigned
publication until its next sync, and keeps its ``[trusted=yes]`` line until then.

One sync of a mirror at a time, across every process sharing the Pulp: a sync holds a lease,
a content guard named ``buildfarm/_mirrors/<m>/syncing`` (Pulp's unique names make creating
it atomic; a content guard is created and deleted without a task).  A second sync while one
runs is refused at once (ConflictError "already syncing": the running one brings the mirror
up to date); a lease older than every bound of a sync (its holder died) is taken over.  And
the distribution only moves forward: a publication of a version older than the one served is
never switched to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import typing as t
from collections.abc import Iterator
from datetime import UTC, datetime

from pulp_glue.common.context import EntityDefinition
from pulp_glue.common.exceptions import PulpException
from pulp_glue.core.context import PulpContentRedirectContentGuardContext

from buildfarm.backends.base import AptSource
from buildfarm.backends.pulp.client import UNAVAILABLE_RETRY_SECONDS, PulpClient
from buildfarm.backends.pulp.contexts import (
    PulpAptDistributionContext,
    PulpAptPublicationContext,
    PulpAptRemoteContext,
    PulpAptRepositoryContext,
    PulpDebPackageContext,
)
from buildfarm.backends.pulp.layout import REPOSITORY_PREFIX
from buildfarm.model import names
from buildfarm.model.errors import ConflictError, PermanentError, ServiceUnavailableError
from buildfarm.model.mirrors import check_mirror, signing_key
from buildfarm.model.settings import MirrorConfig
from buildfarm_client.models import MirrorSyncOut

log = logging.getLogger(__name__)

MIRROR_SEGMENT = "_mirrors"
CACHE_SEGMENT = "_cache"
"""Base paths of the package cache's upstreams (:mod:`.packagecache`); kept forever like mirrors."""
DownloadPolicy = t.Literal["immediate", "on_demand", "streamed"]
"""pulp_deb's remote policies: packages fetched at sync, on a client's first request (then kept),
or on every request (never kept)."""
CLASS_LABEL = "buildfarm.class"
MIRROR_CLASS = "mirror"
MIRROR_LABEL = "buildfarm.mirror"

_UNREACHABLE_HINTS = ("cannot connect", "connection refused", "timeout", "timed out", "name or service")
"""How Pulp's downloader (aiohttp) words an upstream it could not reach."""
_NOT_SIGNED_CODE = "DEB0002"
"""pulp_deb's error code for "no Release file verifies with the remote's gpgkey"."""
DEFAULT_RETAIN_VERSIONS = 2
"""Versions Pulp keeps of a mirror repository unless configured (see ``mirror_retain_versions``)."""
SYNC_TASKS = 3
"""A sync waits on at most three Pulp tasks in a row (sync, publication, distribution)."""
LEASE_GRACE_SECONDS = 60.0
"""Beyond its three task bounds, how long a sync may take before its lease counts as abandoned."""


def mirror_base_path(name: str, segment: str = MIRROR_SEGMENT) -> str:
    """``<segment>/<name>``: ``_mirrors`` for 3rd-party mirrors, ``_cache`` for the package cache's."""
    return f"{segment}/{names.to_safe(names.check_simple_name(name, 'mirror'))}"


class PulpMirrors:
    """The configured mirrors of one farm on the Pulp reached through ``client``."""

    def __init__(
        self,
        client: PulpClient,
        content_origin: str,
        mirrors: list[MirrorConfig],
        retain_versions: int = DEFAULT_RETAIN_VERSIONS,
        *,
        signing_service: t.Callable[[], str] | None = None,
        keyring: str | None = None,
        policy: DownloadPolicy = "immediate",
        segment: str = MIRROR_SEGMENT,
    ) -> None:
        """``signing_service`` gives the href of the signing service that signs every mirror
        publication (None: unsigned); ``keyring`` is where apt users keep its public key.
        ``policy``: when Pulp downloads the packages (``immediate``: at sync, a mirror kept whole;
        ``on_demand``: the first time a client asks, then from Pulp's storage: the package cache,
        :mod:`.packagecache`); ``segment``: the first part of the base paths."""
        if retain_versions < 2:  # the served version and the one a sync makes
            raise PermanentError(f"mirror_retain_versions is {retain_versions}: at least 2 are needed")
        if signing_service is not None and keyring is None:
            raise PermanentError("a signing service for mirrors needs the keyring its apt lines name")
        self.client = client
        self.content_origin = content_origin.rstrip("/")
        self.mirrors = list(mirrors)
        self.retain_versions = retain_versions
        self.signing_service = signing_service
        self.keyring = keyring
        self.policy = policy
        self.segment = segment
        self._signed_publications: dict[str, bool] = {}  # a publication's signing never changes

    def source(self, mirror: MirrorConfig, signed: bool = True) -> AptSource:
        """The mirror's apt line; ``signed=False`` for a publication made without the signing service."""
        return AptSource(
            url=f"{self.content_origin}/pulp/content/{mirror_base_path(mirror.name, self.segment)}/",
            suite=mirror.distribution,
            components=tuple(mirror.components),
            trusted=True,
            signed_by=self.keyring if signed and self.signing_service is not None else None,
        )

    def usable(self) -> dict[str, AptSource]:
        """Sources of the configured mirrors that have been synced, by name (one request; with
        signing, one more the first time each served publication is seen)."""
        if not self.mirrors:
            return {}
        ctx = self.client.ctx
        with self.client._errors("listing the synced mirrors"):
            served = {
                entity["base_path"]: t.cast(str, entity["publication"])
                for entity in PulpAptDistributionContext(ctx).list_iterator(
                    parameters={
                        "pulp_label_select": f"{CLASS_LABEL}={MIRROR_CLASS}",
                        "fields": ["base_path", "publication"],
                    }
                )
                if entity.get("publication")
            }
            usable: dict[str, AptSource] = {}
            for mirror in self.mirrors:
                publication = served.get(mirror_base_path(mirror.name, self.segment))
                if publication is not None:
                    usable[mirror.name] = self.source(mirror, signed=self._is_signed(mirror, publication))
        return usable

    def _is_signed(self, mirror: MirrorConfig, publication: str) -> bool:
        """Whether ``publication`` was signed (only asked when a signing service is configured)."""
        if self.signing_service is None:
            return False
        signed = self._signed_publications.get(publication)
        if signed is None:
            entity = PulpAptPublicationContext(self.client.ctx, pulp_href=publication).entity
            signed = bool(entity.get("signing_service"))
            if not signed:
                log.warning(
                    "pulp: mirror %s serves a publication made before signing was configured: "
                    "[trusted=yes] until its next sync",
                    mirror.name,
                )
            self._signed_publications[publication] = signed
        return signed

    def sync(self, mirror: MirrorConfig) -> MirrorSyncOut:
        """Sync ``mirror`` from upstream, publish the result and switch its distribution to it."""
        check_mirror(mirror)
        started = time.monotonic()
        base_path = mirror_base_path(mirror.name, self.segment)
        name = f"{REPOSITORY_PREFIX}/{base_path}"
        labels = {CLASS_LABEL: MIRROR_CLASS, MIRROR_LABEL: names.to_safe(mirror.name)}
        with (
            self.client._errors(f"syncing mirror {mirror.name!r} from {mirror.url}"),
            self._lease(mirror, name),
        ):
            remote = self._remote(name, mirror, labels)
            repository = self._repository(name, labels)
            self._run_sync(mirror, repository, remote)
            version = t.cast(str, self.client._read(repository)["latest_version_href"])
            publication = self._publication(version)
            self._point_distribution(name, base_path, publication, version, labels)
            stats: dict[str, t.Any] = {}
            for _ in PulpDebPackageContext(self.client.ctx).list_iterator(
                parameters={"repository_version": version, "fields": ["pulp_href"]}, batch_size=1, stats=stats
            ):
                break
        seconds = time.monotonic() - started
        number = str(_version_number(version))
        log.info("pulp: mirror %s at version %s (%s packages) in %.2fs", mirror.name, number, stats, seconds)
        return MirrorSyncOut(
            name=mirror.name,
            source=self.source(mirror).line(),
            packages=int(stats.get("count", 0)),
            version=number,
            seconds=seconds,
        )

    # -- the parts ---------------------------------------------------------------------------

    def _remote(self, name: str, mirror: MirrorConfig, labels: dict[str, str]) -> str:
        """The mirror's deb remote, created or brought in line with the configuration."""
        wanted: EntityDefinition = {
            "url": mirror.url,
            "distributions": mirror.distribution,
            "components": " ".join(mirror.components),
            "architectures": " ".join(mirror.architectures),
            "policy": self.policy,
            "gpgkey": signing_key(mirror),
            "pulp_labels": labels,
        }
        ctx = self.client.ctx
        found = self.client._find_or_create(
            lambda: PulpAptRemoteContext(ctx), {"name": name, **wanted}, name=name
        )
        changed = {key: value for key, value in wanted.items() if found.get(key) != value}
        if changed:
            log.info("pulp: mirror remote %s changed: %s", name, sorted(changed))
            PulpAptRemoteContext(ctx, pulp_href=found["pulp_href"]).update(body=changed)
        return t.cast(str, found["pulp_href"])

    def _repository(self, name: str, labels: dict[str, str]) -> str:
        """The mirror's repository, keeping ``retain_versions`` versions (set again if changed)."""
        ctx = self.client.ctx
        body = {
            "name": name,
            "description": f"buildfarm mirror {name}",
            "pulp_labels": labels,
            "retain_repo_versions": self.retain_versions - 1,  # + the served one, which Pulp protects
        }
        found = self.client._find_or_create(lambda: PulpAptRepositoryContext(ctx), body, name=name)
        if found.get("retain_repo_versions") != body["retain_repo_versions"]:
            log.info("pulp: mirror repository %s keeps %d versions", name, self.retain_versions)
            PulpAptRepositoryContext(ctx, pulp_href=found["pulp_href"]).update(
                body={"retain_repo_versions": body["retain_repo_versions"]}
            )
        return t.cast(str, found["pulp_href"])

    @contextlib.contextmanager
    def _lease(self, mirror: MirrorConfig, name: str) -> Iterator[None]:
        """Hold the mirror's sync lease (see the module's doc); ConflictError while another holds it."""
        ctx = self.client.ctx
        lease_name = f"{name}/syncing"
        bound = SYNC_TASKS * self.client.task_timeout_seconds + LEASE_GRACE_SECONDS
        holder = f"{socket.gethostname()} pid {os.getpid()} thread {threading.get_ident()}"
        body = {"name": lease_name, "description": f"buildfarm: mirror {mirror.name} is syncing ({holder})"}
        lease: str | None = None
        for _ in range(2):  # a second try only after removing an abandoned lease
            try:
                lease = t.cast(
                    str, PulpContentRedirectContentGuardContext(ctx).create(body=body)["pulp_href"]
                )
                break
            except PulpException:
                found = self.client._first(PulpContentRedirectContentGuardContext(ctx), name=lease_name)
                if found is None:
                    continue  # released between our create and our look: try once more
                created = datetime.fromisoformat(t.cast(str, found["pulp_created"]))
                age = (datetime.now(UTC) - created).total_seconds()
                if age <= bound:
                    raise ConflictError(
                        f"mirror {mirror.name!r} is already syncing (for {max(age, 0):.0f} s); "
                        "that sync brings it up to date: try again when it is done"
                    ) from None
                log.warning(
                    "pulp: mirror %s: taking over a sync lease abandoned %.0f s ago", mirror.name, age
                )
                with contextlib.suppress(PulpException):  # another taker may have removed it first
                    PulpContentRedirectContentGuardContext(ctx, pulp_href=found["pulp_href"]).delete()
        if lease is None:
            raise ConflictError(f"mirror {mirror.name!r} is already syncing: try again when it is done")
        try:
            yield
        finally:
            try:
                PulpContentRedirectContentGuardContext(ctx, pulp_href=lease).delete()
            except PulpException as exc:  # left behind, it expires after the bound
                log.warning("pulp: mirror %s: could not release its sync lease: %s", mirror.name, exc)

    def _run_sync(self, mirror: MirrorConfig, repository: str, remote: str) -> None:
        """Pulp's sync task, waited for within the task timeout; an unreachable upstream is temporary."""
        context = PulpAptRepositoryContext(self.client.ctx, pulp_href=repository)
        try:
            context.sync(body={"remote": remote, "mirror": True})
        except PulpException as exc:
            detail = " ".join(str(exc).split())[:500]
            if _NOT_SIGNED_CODE in detail:
                raise PermanentError(
                    f"mirror {mirror.name!r}: no Release file of {mirror.url} is signed by the key in "
                    f"{mirror.signed_by} (Pulp's sync refused it; nothing new is published)"
                ) from exc
            if any(hint in detail.lower() for hint in _UNREACHABLE_HINTS):
                raise ServiceUnavailableError(
                    f"mirror {mirror.name!r}: its upstream {mirror.url} cannot be reached from Pulp "
                    f"at {self.client.base_url}: {detail}",
                    UNAVAILABLE_RETRY_SECONDS,
                ) from exc
            raise

    def _publication(self, version: str) -> str:
        """A structured publication of ``version``, signed by the signing service if there is one:
        the one a previous sync made, or a new one."""
        ctx = self.client.ctx
        body: dict[str, t.Any] = {"repository_version": version, "structured": True, "simple": False}
        if self.signing_service is not None:
            body["signing_service"] = self.signing_service()
        for found in PulpAptPublicationContext(ctx).list_iterator(parameters={"repository_version": version}):
            if found.get("structured") and found.get("signing_service") == body.get("signing_service"):
                return t.cast(str, found["pulp_href"])
        created = PulpAptPublicationContext(ctx).create(body=body)
        return t.cast(str, created["pulp_href"])

    def _point_distribution(
        self, name: str, base_path: str, publication: str, version: str, labels: dict[str, str]
    ) -> None:
        """Serve ``publication`` (of ``version``) at ``base_path``: created once, then switched by
        one update, and only forward: never to a version older than the one served (the same
        version's new publication is taken: signing was turned on or changed)."""
        ctx = self.client.ctx
        body = {"name": name, "base_path": base_path, "publication": publication, "pulp_labels": labels}
        found = self.client._find_or_create(
            lambda: PulpAptDistributionContext(ctx), body, base_path=base_path
        )
        served = found.get("publication")
        if served == publication:
            return
        if served:
            served_version = PulpAptPublicationContext(ctx, pulp_href=served).entity["repository_version"]
            if _version_number(served_version) > _version_number(version):
                log.warning(
                    "pulp: mirror %s already serves version %s: not switching back to %s",
                    name,
                    _version_number(served_version),
                    _version_number(version),
                )
                return
        PulpAptDistributionContext(ctx, pulp_href=found["pulp_href"]).update(
            body={"publication": publication}
        )


def _version_number(version_href: str) -> int:
    """``.../versions/7/`` -> 7."""
    return int(version_href.rstrip("/").rsplit("/", 1)[1])
