"""Build inputs in Pulp: one file repository (pulp_file) holding every upstream file builds used.

The artifact store keeps build inputs forever (:mod:`buildfarm.engine.srcpkg`); on the
production profile Pulp holds them too, as the spec asks ("build inputs live in Pulp"): the
repository ``buildfarm/_inputs``, labelled ``buildfarm.class=mirror`` like the 3rd-party mirrors,
so no retention step ever touches it (expiry and the leftover sweep look at apt repositories of
builds only, and Pulp's orphan cleanup never frees content its latest version holds).  Each file
is the content ``<sha256>/<name>``: two upstream files of one name (two projects' ``v1.0.tar.gz``)
both fit.  Pulp keeps only the latest version (``retain_repo_versions`` 1): each version holds
every input added before it, so nothing is lost with the older ones.

Adding is idempotent: a file Pulp holds already (by sha256, from any repository) is not sent
again, and a modify that adds nothing makes no version.
"""

from __future__ import annotations

import logging
import threading
import typing as t

from pulp_glue.file.context import PulpFileContentContext, PulpFileRepositoryContext

from buildfarm.backends.base import PackageFile
from buildfarm.backends.pulp.client import PulpClient
from buildfarm.backends.pulp.layout import REPOSITORY_PREFIX
from buildfarm.backends.pulp.mirrors import CLASS_LABEL, MIRROR_CLASS

log = logging.getLogger(__name__)

INPUTS_REPOSITORY = f"{REPOSITORY_PREFIX}/_inputs"
INPUTS_LABEL = "buildfarm_inputs"


def relative_path(file: PackageFile) -> str:
    return f"{file.sha256}/{file.filename}"


class PulpBuildInputs:
    """The file repository of build inputs of one Pulp (see the module); safe to share between threads."""

    def __init__(self, client: PulpClient, artifact: t.Callable[[PackageFile], str]) -> None:
        self.client = client
        self._artifact = artifact  # the Pulp artifact of a file, found by sha256 or uploaded
        self._kept: set[str] = set()  # relative paths this process saw in the repository
        self._lock = threading.Lock()

    def repository(self) -> str:
        """The repository's href (created, labelled as a mirror class, on first use)."""
        body = {
            "name": INPUTS_REPOSITORY,
            "description": "buildfarm build inputs: upstream tarballs, .dsc files, kept forever",
            "retain_repo_versions": 1,
            "pulp_labels": {CLASS_LABEL: MIRROR_CLASS, INPUTS_LABEL: "1"},
        }
        found = self.client._find_or_create(
            lambda: PulpFileRepositoryContext(self.client.ctx), body, name=INPUTS_REPOSITORY
        )
        return t.cast(str, found["pulp_href"])

    def keep(self, files: list[PackageFile]) -> int:
        """Make the repository hold ``files``; returns how many it did not hold before."""
        with self._lock:
            wanted = {relative_path(f): f for f in files if relative_path(f) not in self._kept}
        if not wanted:
            return 0
        with self.client._errors(f"keeping {len(wanted)} build inputs in {INPUTS_REPOSITORY}"):
            repository = self.repository()
            latest = t.cast(
                str, PulpFileRepositoryContext(self.client.ctx).show(repository)["latest_version_href"]
            )
            held = {
                entity["relative_path"]
                for entity in PulpFileContentContext(self.client.ctx).list_iterator(
                    parameters={"repository_version": latest, "relative_path__in": sorted(wanted)},
                )
            }
            add: list[str] = []
            for path, file in sorted(wanted.items()):
                if path in held:
                    continue
                artifact = self._artifact(file)
                body = {"relative_path": path, "artifact": artifact}
                content = self.client._find_or_create(
                    lambda: PulpFileContentContext(self.client.ctx),
                    body,
                    relative_path=path,
                    sha256=file.sha256,
                )
                add.append(t.cast(str, content["pulp_href"]))
            if add:
                PulpFileRepositoryContext(self.client.ctx, pulp_href=repository).modify(add_content=add)
                log.info("pulp: %d build inputs added to %s", len(add), INPUTS_REPOSITORY)
        with self._lock:
            self._kept |= set(wanted)
        return len(add)
