"""Retention in Pulp: expire one build's distribution and what only it served, then orphan cleanup.

How builds map to Pulp (see :mod:`buildfarm.backends.pulp`): a build's distribution
``<p>/<b>/<id>`` (or ``<p>/_personal/<u>/<id>``) serves one publication of one repository
version: a version of the branch repository for builds that moved ``latest``, of a side
repository (``.../unpromoted``, a user's personal one) otherwise.  A build whose packages were
all identical to the branch's latest shares that version and its publication with the build
before it.  So expiring a build is:

1. delete its distribution (absent: the build is done, expiring is idempotent);
2. delete its repository version, which takes its publications with it, unless Pulp refuses
   because another distribution still serves it (a kept build sharing it, or ``latest``, which
   serves the newest published version of the branch).  That refusal *is* the check: Pulp
   makes it in the same request, so no kept build loses its packages to a race with our own
   lookups.  The latest version of the branch repository is never asked for; the latest
   version of a side repository is first replaced by an empty one (side versions are
   snapshots of the branch, nothing is built on them), so its packages can go too;
3. later, :func:`collect_garbage`: Pulp's orphan cleanup deletes the packages and files that
   no repository version holds any more, once they have been orphans for
   ``orphan_protection_minutes`` (Pulp's ``ORPHAN_PROTECTION_TIME`` when not given: a day by
   default, so an upload on its way into a repository is never collected; tests use 0).

The build that ``latest`` points at (the branch repository's newest-build label) is refused with
one clear line: the retention policy always keeps it.  Mirrors (label ``buildfarm.class=mirror``)
are never touched.  The work grows with the expired builds only: a few requests per build.
"""

from __future__ import annotations

import logging
import typing as t

from pulp_glue.common.context import EntityDefinition
from pulp_glue.common.exceptions import PulpEntityNotFound, PulpHTTPError
from pulp_glue.core.context import PulpOrphanContext

from buildfarm.backends.base import BuildRef
from buildfarm.backends.pulp.client import PulpClient
from buildfarm.backends.pulp.contexts import (
    PulpAptDistributionContext,
    PulpAptPublicationContext,
    PulpAptRepositoryContext,
    PulpAptRepositoryVersionContext,
)
from buildfarm.backends.pulp.layout import Place, newest_build, place_of
from buildfarm.backends.pulp.mirrors import CLASS_LABEL, MIRROR_CLASS
from buildfarm.model.errors import PermanentError

log = logging.getLogger(__name__)

HTTP_BAD_REQUEST = 400
HTTP_NOT_FOUND = 404


def _is_mirror(entity: EntityDefinition) -> bool:
    return (entity.get("pulp_labels") or {}).get(CLASS_LABEL) == MIRROR_CLASS


def _show(client: PulpClient, context: t.Any) -> EntityDefinition | None:
    """The entity ``context`` points at, or None if it is gone (deleted by an earlier run)."""
    try:
        return t.cast(EntityDefinition, context.entity)
    except PulpEntityNotFound:
        return None
    except PulpHTTPError as exc:
        if exc.status_code == HTTP_NOT_FOUND:
            return None
        raise


def expire_build(client: PulpClient, build: BuildRef) -> None:
    """Delete the build's distribution and the repository version only it served (module docstring)."""
    place = place_of(build)
    base_path = place.build_path(build.build_id)
    with client._errors(f"expiring build {build.build_id} at {base_path}"):
        found = client._distribution(base_path)
        if found is None:
            return
        if _is_mirror(found):
            raise PermanentError(f"{base_path} is a mirror's distribution; mirrors are kept forever")
        if build.kind != "personal":
            branch = client._repository(place.branch_repository, create=False)
            if branch is not None and newest_build(client._read(branch)) == build.build_id:
                raise PermanentError(
                    f"build {build.build_id} is what latest of {build.project}/{build.branch} serves; "
                    "it is not expired"
                )
        PulpAptDistributionContext(client.ctx, pulp_href=found["pulp_href"]).delete()
        publication = found.get("publication")
        if publication:
            _drop_version_of(client, t.cast(str, publication), place)
        log.info("pulp: expired build %s (%s)", build.build_id, base_path)


def _drop_version_of(client: PulpClient, publication_href: str, place: Place) -> None:
    publication = _show(client, PulpAptPublicationContext(client.ctx, pulp_href=publication_href))
    if publication is None:
        return
    version = t.cast(str, publication["repository_version"])
    repository_href = version.rsplit("versions/", 1)[0]
    repository = PulpAptRepositoryContext(client.ctx, pulp_href=repository_href)
    record = _show(client, repository)
    if record is None or _is_mirror(record):
        return
    if record["latest_version_href"] == version:
        if record["name"] != place.side_repository:
            return  # the branch's latest version: what `latest` serves (or will, once published)
        # A side repository: an empty latest version lets this one go; snapshots never build on it.
        repository.modify(remove_content=["*"])
    context = PulpAptRepositoryVersionContext(client.ctx, repository, pulp_href=version)
    try:
        context.delete()
    except PulpHTTPError as exc:
        if exc.status_code == HTTP_NOT_FOUND:
            return
        if exc.status_code != HTTP_BAD_REQUEST:
            raise
        # Pulp refuses: a distribution still serves this version (a kept build shares it).
        log.info("pulp: %s is still served; kept (%s)", version, " ".join(str(exc).split())[:200])


def collect_garbage(client: PulpClient, orphan_protection_minutes: int | None) -> None:
    """Pulp's orphan cleanup: packages and files no repository version holds, orphaned long enough."""
    body: dict[str, t.Any] = {}
    if orphan_protection_minutes is not None:
        body["orphan_protection_time"] = orphan_protection_minutes
    with client._errors("cleaning up orphaned packages"):
        task = PulpOrphanContext(client.ctx).cleanup(body)
    done = {
        report.get("code"): report.get("done")
        for report in (task.get("progress_reports") or [] if isinstance(task, dict) else [])
    }
    log.info(
        "pulp: orphan cleanup removed %s content units and %s files",
        done.get("clean-up.content", "?"),
        done.get("clean-up.artifacts", "?"),
    )
