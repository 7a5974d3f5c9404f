"""Where the farm's packages live in Pulp: repository names, base paths, labels, content units.

Pure names and small records, no requests: the layout described in :mod:`buildfarm.backends.pulp`.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from pulp_glue.common.context import EntityDefinition

from buildfarm.backends.base import BuildRef
from buildfarm.model import names
from buildfarm.model.errors import PermanentError

DEFAULT_SUITE = "buildfarm"
"""The apt distribution (suite) of every publication: ``deb <url> buildfarm main``."""
COMPONENT = "main"
PERSONAL_SEGMENT = "_personal"
REPOSITORY_PREFIX = "buildfarm"
UNPROMOTED_SEGMENT = "unpromoted"
STAGING_SEGMENT = "staging"
LATEST_SEGMENT = "latest"

PROJECT_LABEL = "buildfarm_project"
BUILD_LABEL = "buildfarm_build"
NEWEST_BUILD_LABEL = "buildfarm_newest_build"
"""On a branch repository: the newest build merged into it (retention never expires that one)."""

SOURCE_LABEL_PREFIX = "buildfarm_src."
"""On a branch repository, one label per source package: ``<version> <build id>`` of the build
that brought the version the branch holds (:mod:`.branchmerge`); Pulp's packages do not say."""

PACKAGE_FIELDS = ["pulp_href", "package", "source", "architecture", "version", "sha256"]


@dataclass(frozen=True)
class PulpPackage:
    """A .deb as Pulp holds it."""

    href: str
    name: str
    architecture: str
    version: str
    sha256: str = ""
    source: str = ""
    """The source package's name (the binary's own when its control has no ``Source:``)."""
    source_version: str = ""
    """The source package's version: ``Source: name (version)`` when a binary's differs."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.architecture)

    @classmethod
    def from_entity(cls, entity: EntityDefinition) -> PulpPackage:
        name, _, rest = str(entity.get("source") or entity["package"]).partition("(")
        version = rest.rstrip(") ").strip() or entity["version"]
        return cls(
            entity["pulp_href"],
            entity["package"],
            entity["architecture"],
            entity["version"],
            str(entity.get("sha256") or ""),
            name.strip() or entity["package"],
            version,
        )


@dataclass(frozen=True)
class Unit:
    """What a repository version needs for one package to appear in ``<suite> main``."""

    package: PulpPackage
    release_component: str
    release_architecture: str | None  # None for "all": pulp_deb publishes "all" for every suite
    package_release_component: str

    @property
    def hrefs(self) -> list[str]:
        shared = [self.release_component, self.release_architecture]
        return [self.package.href, self.package_release_component, *(h for h in shared if h is not None)]


SOURCE_FIELDS = ["pulp_href", "source", "version", "artifacts"]
"""``artifacts`` too: pulp_deb 3.11's source package serializer fails (HTTP 500) on a ``fields``
list without it."""


@dataclass(frozen=True)
class PulpSource:
    """A source package (.dsc and the files it names) as Pulp holds it."""

    href: str
    source: str
    version: str

    @classmethod
    def from_entity(cls, entity: EntityDefinition) -> PulpSource:
        return cls(entity["pulp_href"], str(entity["source"]), str(entity["version"]))


@dataclass(frozen=True)
class SourceUnit:
    """What a repository version needs for one source package to appear in ``<suite> main``'s
    ``Sources`` (pulp_deb serves the .dsc and its files under ``pool/``)."""

    package: PulpSource
    release_component: str
    source_release_component: str

    @property
    def hrefs(self) -> list[str]:
        return [self.package.href, self.source_release_component, self.release_component]


@dataclass(frozen=True)
class Place:
    """Where one build's packages go: repository names and distribution base paths."""

    project: str  # to_safe
    branch_key: str  # <p>/<b>
    owner_key: str  # <p>/<b> or <p>/_personal/<u>: where the build's own distribution lives

    @property
    def branch_repository(self) -> str:
        return f"{REPOSITORY_PREFIX}/{self.branch_key}"

    def build_path(self, build_id: int) -> str:
        return f"{self.owner_key}/{build_id}"

    @property
    def latest_path(self) -> str:
        return f"{self.branch_key}/{LATEST_SEGMENT}"

    def staging_path(self, build_id: int) -> str:
        return f"{self.branch_key}/{STAGING_SEGMENT}/{build_id}"

    def staging_repository(self, build_id: int) -> str:
        return f"{REPOSITORY_PREFIX}/{self.staging_path(build_id)}"

    @property
    def side_repository(self) -> str:
        """Where builds that do not move latest keep their versions."""
        if self.owner_key != self.branch_key:
            return f"{REPOSITORY_PREFIX}/{self.owner_key}"
        return f"{REPOSITORY_PREFIX}/{self.branch_key}/{UNPROMOTED_SEGMENT}"


def branch_place(project: str, branch: str, personal_user: str | None = None) -> Place:
    names.check_simple_name(project, "project")
    names.check_ref_name(branch, "branch")
    safe_project = names.to_safe(project)
    branch_key = f"{safe_project}/{names.to_safe(branch)}"
    owner_key = branch_key
    if personal_user is not None:
        names.check_simple_name(personal_user, "user")
        owner_key = f"{safe_project}/{PERSONAL_SEGMENT}/{names.to_safe(personal_user)}"
    return Place(safe_project, branch_key, owner_key)


def place_of(build: BuildRef) -> Place:
    return branch_place(build.project, build.branch, build.user if build.kind == "personal" else None)


def source_label(source: str) -> str:
    """The label key of ``source`` on a branch repository (label keys allow no ``+``; Debian
    source names allow no ``_``, so the swap is one to one)."""
    return SOURCE_LABEL_PREFIX + source.replace("+", "_")


def check_filename(filename: str) -> str:
    plain = "/" not in filename and "\0" not in filename and not filename.startswith(".")
    if not plain or not filename.endswith((".deb", ".udeb")):
        raise PermanentError(f"invalid package file name {filename!r}: it must be one plain *.deb or *.udeb")
    return filename


def hrefs(units: t.Sequence[Unit | SourceUnit]) -> list[str]:
    return [href for unit in units for href in unit.hrefs]


def created_version(result: t.Any) -> EntityDefinition | None:
    """The version a modify task created; pulp-glue returns the task itself when nothing changed."""
    if isinstance(result, dict) and "number" in result:
        return result
    return None


def version_number(href: str) -> int:
    return int(href.rstrip("/").rsplit("/", 1)[1])


def newest_build(record: EntityDefinition | None) -> int | None:
    if record is None:
        return None
    value = (record.get("pulp_labels") or {}).get(NEWEST_BUILD_LABEL, "")
    return int(value) if value.isdigit() else None
