"""The package repository of production: Pulp (pulpcore + pulp_deb), driven through pulp-glue.

Modules: :mod:`.contexts` (pulp_deb's endpoints), :mod:`.client` (bounded requests and task
waits, errors), :mod:`.layout` (names and paths), :mod:`.branchmerge` (what a branch holds),
:mod:`.repository` (builds), :mod:`.mirrors`, :mod:`.inputs` (build inputs),
:mod:`.expire` (retention: expiring builds, orphan cleanup).

Many nodes, projects, branches and users share one Pulp; the farm talks to it only through
pulp-glue (its contexts call Pulp's own OpenAPI description), never by hand-written REST.
What lives in Pulp (``<p>``, ``<b>``, ``<u>`` are ``to_safe`` names)::

    repository buildfarm/<p>/<b>                 the branch: one version per successful build
    repository buildfarm/<p>/<b>/unpromoted      builds that must not move latest (e.g. failed)
    repository buildfarm/<p>/_personal/<u>       a user's personal builds
    repository buildfarm/<p>/<b>/staging/<id>    a running build; deleted with its staging
    distribution <p>/<b>/latest                  bound to the branch repository (see below)
    distribution <p>/<b>/<id>                    one build's publication, never changed again
    distribution <p>/_personal/<u>/<id>          a personal build's publication
    distribution <p>/<b>/staging/<id>            bound to the build's staging repository
    remote, repository buildfarm/_mirrors/<m>    a 3rd-party mirror (see :mod:`.mirrors`)
    distribution _mirrors/<m>                    the mirror's last good sync; kept forever
    file repository buildfarm/_inputs            build inputs (upstream tarballs, .dsc); kept forever

``to_safe`` escapes ``_`` itself, so ``_personal`` is never a branch's name and no two projects,
branches or users share a repository or a base path.  Every publication is *structured*: apt
reads it as ``deb <origin>/pulp/content/<base path>/ <suite> main``.

Each build's version holds the branch's whole package set as of that build: the branch
repository's latest version with the build's source packages merged in by the local backend's
rules (:mod:`.branchmerge`: a newer version of a source package replaces all of the older one's
binaries, a lower one never wins, whatever order builds publish in), each binary's source
package (pulp_deb source content: the .dsc and its files) going with it.  A successful build writes
it into the branch repository with one ``modify`` relative to whatever version is latest when
Pulp runs the task: Pulp runs the tasks of one repository one at a time, so concurrent builds of
a branch never lose each other's packages, and a build that finds another wrote in between plans
again on the result.  Builds that must not move latest write the same kind of set, built on the
branch's latest version as ``base_version``, into a repository of their own (a personal build's
packages win there whatever their versions).

``latest`` is a distribution bound to the branch *repository*: Pulp serves the newest complete
publication of its newest published version, so creating the build's publication is the switch,
atomic for apt (a publication is served only once complete) and ordered by Pulp itself rather
than by whichever node updates a distribution last.

Uploads are deduplicated across the whole Pulp: a .deb whose sha256 Pulp already holds (from
any repository) is added by reference, never sent again.  Every wait on a Pulp task has a
deadline and every HTTP request a timeout; Pulp's errors become one
:class:`~buildfarm.model.errors.ServiceUnavailableError` (unreachable, 5xx, task deadline) or
:class:`~buildfarm.model.errors.PermanentError` (anything else) naming what failed.
"""

from __future__ import annotations

from buildfarm.backends.pulp.contexts import (
    PulpAptDistributionContext,
    PulpAptRepositoryContext,
    PulpDebPackageContext,
)
from buildfarm.backends.pulp.repository import PulpRepository

__all__ = [
    "PulpAptDistributionContext",
    "PulpAptRepositoryContext",
    "PulpDebPackageContext",
    "PulpRepository",
]
