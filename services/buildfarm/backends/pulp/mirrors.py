"""3rd-party Debian repositories mirrored into Pulp: a deb remote, a repository, a distribution.

For a configured mirror ``<m>`` (``to_safe`` name)::

    remote        buildfarm/_mirrors/<m>   url, distributions, components, architectures; policy immediate
    repository    buildfarm/_mirrors/<m>   one version per sync that changed something
    distribution  _mirrors/<m>             bound to the publication of the last good sync

All three carry the labels ``buildfarm.class=mirror`` and ``buildfarm.mirror=<m>``: retention
keeps class ``mirror`` forever.  ``_mirrors`` cannot be a project's base path (``to_safe``
escapes ``_``), so no build distribution ever overlaps a mirror's.

A sync is Pulp's own ``mirror`` sync (the version holds exactly what upstream lists now), then a
structured publication of the new version, then one update of the distribution to it: apt sees
the old publication until the new one is complete and the distribution is switched, never a
half-synced state.  The distribution exists only after a first good sync, so
:meth:`PulpMirrors.usable` lists only mirrors builds can use.  Every wait is bounded by the
task timeout; an upstream that cannot be reached is a ServiceUnavailableError naming the mirror.
"""

from __future__ import annotations

import logging
import time
import typing as t

from pulp_glue.common.context import EntityDefinition
from pulp_glue.common.exceptions import PulpException

from buildfarm.backends.base import AptSource, MirrorStatus
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
from buildfarm.model.errors import ServiceUnavailableError
from buildfarm.model.mirrors import check_mirror
from buildfarm.model.settings import MirrorConfig

log = logging.getLogger(__name__)

MIRROR_SEGMENT = "_mirrors"
CLASS_LABEL = "buildfarm.class"
MIRROR_CLASS = "mirror"
MIRROR_LABEL = "buildfarm.mirror"

_UNREACHABLE_HINTS = ("cannot connect", "connection refused", "timeout", "timed out", "name or service")
"""How Pulp's downloader (aiohttp) words an upstream it could not reach."""


def mirror_base_path(name: str) -> str:
    return f"{MIRROR_SEGMENT}/{names.to_safe(names.check_simple_name(name, 'mirror'))}"


class PulpMirrors:
    """The configured mirrors of one farm on the Pulp reached through ``client``."""

    def __init__(self, client: PulpClient, content_origin: str, mirrors: list[MirrorConfig]) -> None:
        self.client = client
        self.content_origin = content_origin.rstrip("/")
        self.mirrors = list(mirrors)

    def source(self, mirror: MirrorConfig) -> AptSource:
        return AptSource(
            url=f"{self.content_origin}/pulp/content/{mirror_base_path(mirror.name)}/",
            suite=mirror.distribution,
            components=tuple(mirror.components),
            trusted=True,
        )

    def usable(self) -> dict[str, AptSource]:
        """Sources of the configured mirrors that have been synced, by name (one request)."""
        if not self.mirrors:
            return {}
        ctx = self.client.ctx
        with self.client._errors("listing the synced mirrors"):
            synced = {
                entity["base_path"]
                for entity in PulpAptDistributionContext(ctx).list_iterator(
                    parameters={
                        "pulp_label_select": f"{CLASS_LABEL}={MIRROR_CLASS}",
                        "fields": ["base_path", "publication"],
                    }
                )
                if entity.get("publication")
            }
        return {m.name: self.source(m) for m in self.mirrors if mirror_base_path(m.name) in synced}

    def sync(self, mirror: MirrorConfig) -> MirrorStatus:
        """Sync ``mirror`` from upstream, publish the result and switch its distribution to it."""
        check_mirror(mirror)
        started = time.monotonic()
        base_path = mirror_base_path(mirror.name)
        name = f"{REPOSITORY_PREFIX}/{base_path}"
        labels = {CLASS_LABEL: MIRROR_CLASS, MIRROR_LABEL: names.to_safe(mirror.name)}
        with self.client._errors(f"syncing mirror {mirror.name!r} from {mirror.url}"):
            remote = self._remote(name, mirror, labels)
            repository = self._repository(name, labels)
            self._run_sync(mirror, repository, remote)
            version = t.cast(str, self.client._read(repository)["latest_version_href"])
            publication = self._publication(version)
            self._point_distribution(name, base_path, publication, labels)
            stats: dict[str, t.Any] = {}
            for _ in PulpDebPackageContext(self.client.ctx).list_iterator(
                parameters={"repository_version": version, "fields": ["pulp_href"]}, batch_size=1, stats=stats
            ):
                break
        seconds = time.monotonic() - started
        number = version.rstrip("/").rsplit("/", 1)[1]
        log.info("pulp: mirror %s at version %s (%s packages) in %.2fs", mirror.name, number, stats, seconds)
        return MirrorStatus(
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
            "policy": "immediate",
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
        ctx = self.client.ctx
        body = {"name": name, "description": f"buildfarm mirror {name}", "pulp_labels": labels}
        found = self.client._find_or_create(lambda: PulpAptRepositoryContext(ctx), body, name=name)
        return t.cast(str, found["pulp_href"])

    def _run_sync(self, mirror: MirrorConfig, repository: str, remote: str) -> None:
        """Pulp's sync task, waited for within the task timeout; an unreachable upstream is temporary."""
        context = PulpAptRepositoryContext(self.client.ctx, pulp_href=repository)
        try:
            context.sync(body={"remote": remote, "mirror": True})
        except PulpException as exc:
            detail = " ".join(str(exc).split())[:500]
            if any(hint in detail.lower() for hint in _UNREACHABLE_HINTS):
                raise ServiceUnavailableError(
                    f"mirror {mirror.name!r}: its upstream {mirror.url} cannot be reached from Pulp "
                    f"at {self.client.base_url}: {detail}",
                    UNAVAILABLE_RETRY_SECONDS,
                ) from exc
            raise

    def _publication(self, version: str) -> str:
        """A structured publication of ``version``: the one a previous sync made, or a new one."""
        ctx = self.client.ctx
        for found in PulpAptPublicationContext(ctx).list_iterator(parameters={"repository_version": version}):
            if found.get("structured"):
                return t.cast(str, found["pulp_href"])
        created = PulpAptPublicationContext(ctx).create(
            body={"repository_version": version, "structured": True, "simple": False}
        )
        return t.cast(str, created["pulp_href"])

    def _point_distribution(
        self, name: str, base_path: str, publication: str, labels: dict[str, str]
    ) -> None:
        """Serve ``publication`` at ``base_path``: created once, then switched by one update."""
        ctx = self.client.ctx
        body = {"name": name, "base_path": base_path, "publication": publication, "pulp_labels": labels}
        found = self.client._find_or_create(
            lambda: PulpAptDistributionContext(ctx), body, base_path=base_path
        )
        if found.get("publication") != publication:
            PulpAptDistributionContext(ctx, pulp_href=found["pulp_href"]).update(
                body={"publication": publication}
            )
