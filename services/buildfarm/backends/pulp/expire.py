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

A build that crashed between writing its repository version and publishing it (or distributing
the publication) leaves a version no distribution serves; so do a merge retried after a
concurrent writer and the empty version that step 2 writes into a side repository.  No build
row names them, so :func:`sweep_leftover_versions` finds them in Pulp: in each build repository
(branch, unpromoted, personal; never staging or mirrors) every version but the latest, older
than the grace period, is deleted unless Pulp refuses because a distribution serves it (a kept
build's, or ``latest``'s newest published version): again Pulp's own check, in the same request.
Deleting a version squashes it into the next one, so no kept version loses a package; what only
the leftover held becomes an orphan for :func:`collect_garbage`.  Each repository's label
``buildfarm_versions_swept`` remembers the highest version number already looked at, so a sweep
lists only the versions written since the last one: its requests grow with new versions (and
one page of repositories per hundred branches), not with the kept builds' versions.

The build that ``latest`` points at (the branch repository's newest-build label) is refused with
one clear line: the retention policy always keeps it.  Mirrors (label ``buildfarm.class=mirror``)
are never touched.  The work grows with the expired builds only: a few requests per build.
"""

from __future__ import annotations

import datetime as dt
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
from buildfarm.backends.pulp.layout import (
    PERSONAL_SEGMENT,
    REPOSITORY_PREFIX,
    UNPROMOTED_SEGMENT,
    Place,
    newest_build,
    place_of,
    version_number,
)
from buildfarm.backends.pulp.mirrors import CACHE_SEGMENT, CLASS_LABEL, MIRROR_CLASS
from buildfarm.model.errors import PermanentError

log = logging.getLogger(__name__)

HTTP_BAD_REQUEST = 400
HTTP_NOT_FOUND = 404
SWEPT_LABEL = "buildfarm_versions_swept"
"""On a build repository: every version up to this number was looked at by a leftover sweep."""
MIRRORS_SEGMENT = "_mirrors"


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
    _delete_version(client, repository, version)


def _delete_version(client: PulpClient, repository: PulpAptRepositoryContext, version: str) -> bool:
    """Delete one version; False when Pulp refuses because a distribution serves it (or ``latest``
    does: the newest published version of a repository a distribution is bound to)."""
    context = PulpAptRepositoryVersionContext(client.ctx, repository, pulp_href=version)
    try:
        context.delete()
    except PulpHTTPError as exc:
        if exc.status_code == HTTP_NOT_FOUND:
            return True
        if exc.status_code != HTTP_BAD_REQUEST:
            raise
        log.info("pulp: %s is still served; kept (%s)", version, " ".join(str(exc).split())[:200])
        return False
    return True


def is_build_repository(name: str) -> bool:
    """A branch, unpromoted or personal repository (``buildfarm/<p>/<b>[/unpromoted]``,
    ``buildfarm/<p>/_personal/<u>``); not a build's staging repository, not a mirror, not the
    package cache's."""
    prefix, *segments = name.split("/")
    if prefix != REPOSITORY_PREFIX or not segments or segments[0] in {MIRRORS_SEGMENT, CACHE_SEGMENT}:
        return False
    if len(segments) == 2:  # <p>/<b>
        return True
    return len(segments) == 3 and (segments[2] == UNPROMOTED_SEGMENT or segments[1] == PERSONAL_SEGMENT)


def sweep_leftover_versions(
    client: PulpClient, older_than: dt.datetime, *, dry_run: bool, within: str = REPOSITORY_PREFIX
) -> int:
    """Delete the versions of build repositories that no distribution serves, except each
    repository's latest, written before ``older_than`` (module docstring); return how many went
    (``dry_run``: how many of them have no publication at all, and nothing changes).
    ``within``: only repositories named under it (``buildfarm/<p>``: one project's)."""
    removed = 0
    cutoff = older_than.astimezone(dt.UTC)
    with client._errors("sweeping repository versions no build serves"):
        listed = PulpAptRepositoryContext(client.ctx).list_iterator(
            parameters={
                "name__startswith": f"{within}/",
                "fields": ["pulp_href", "name", "latest_version_href", "pulp_labels"],
            }
        )
        repositories = [r for r in listed if is_build_repository(r["name"]) and not _is_mirror(r)]
        for record in repositories:
            removed += _sweep_repository(client, record, cutoff, dry_run=dry_run)
    if removed:
        verb = "would remove" if dry_run else "removed"
        log.info("pulp: %s %d repository version(s) no build serves", verb, removed)
    return removed


def _sweep_repository(
    client: PulpClient, record: EntityDefinition, cutoff: dt.datetime, *, dry_run: bool
) -> int:
    latest = version_number(t.cast(str, record["latest_version_href"]))
    swept = str((record.get("pulp_labels") or {}).get(SWEPT_LABEL, "0"))
    start = int(swept) if swept.isdigit() else 0
    if latest <= start + 1:
        return 0  # nothing but the latest written since the last look
    repository = PulpAptRepositoryContext(client.ctx, pulp_href=record["pulp_href"])
    versions = list(
        PulpAptRepositoryVersionContext(client.ctx, repository).list_iterator(
            parameters={
                "number__gt": start,
                "number__lt": latest,
                "pulp_created__lt": cutoff,
                "fields": ["pulp_href", "number"],
            }
        )
    )
    if not versions:
        return 0
    if dry_run:
        return sum(not _published(client, v["pulp_href"]) for v in versions)
    removed = sum(_delete_version(client, repository, v["pulp_href"]) for v in versions)
    # Versions are numbered in the order they are written: every one below the highest listed
    # was old enough too, so the next sweep starts above it.
    repository.set_label(SWEPT_LABEL, str(max(int(v["number"]) for v in versions)))
    return removed


def _published(client: PulpClient, version: str) -> bool:
    """Whether ``version`` has a publication (dry runs count only the unpublished leftovers)."""
    return client._first(PulpAptPublicationContext(client.ctx), repository_version=version) is not None


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
