"""pulp_deb's endpoints as pulp-glue contexts: the only way the farm addresses Pulp's deb API.

pulp-glue-deb declares these same contexts, but its newest release (0.5) caps pulp-glue <0.41,
every pulp-glue <0.41 caps packaging <=26.2, and kombu[redis] 5.7 (the farm's broker client)
pins packaging==26.3: no set of versions satisfies all three.  So the few deb endpoints the
farm uses are declared here on pulp-glue's own base classes, under pulp-glue-deb's names; the
day pulp-glue-deb allows pulp-glue 0.41, ``from pulp_glue.deb.context import ...`` replaces them.
"""

from __future__ import annotations

import typing as t

from pulp_glue.common.context import (
    PluginRequirement,
    PulpContentContext,
    PulpDistributionContext,
    PulpPublicationContext,
    PulpRemoteContext,
    PulpRepositoryContext,
    PulpRepositoryVersionContext,
)

_DEB = [PluginRequirement("deb", specifier=">=3.0")]


class PulpAptRepositoryVersionContext(PulpRepositoryVersionContext):
    HREF = "deb_apt_repository_version_href"
    ID_PREFIX = "repositories_deb_apt_versions"
    NEEDS_PLUGINS = _DEB


class PulpAptRepositoryContext(PulpRepositoryContext):
    ENTITY = "apt repository"
    ENTITIES = "apt repositories"
    HREF = "deb_apt_repository_href"
    ID_PREFIX = "repositories_deb_apt"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "apt"
    VERSION_CONTEXT = PulpAptRepositoryVersionContext


class PulpAptPublicationContext(PulpPublicationContext):
    ENTITY = "apt publication"
    ENTITIES = "apt publications"
    HREF = "deb_apt_publication_href"
    ID_PREFIX = "publications_deb_apt"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "apt"


class PulpAptDistributionContext(PulpDistributionContext):
    ENTITY = "apt distribution"
    ENTITIES = "apt distributions"
    HREF = "deb_apt_distribution_href"
    ID_PREFIX = "distributions_deb_apt"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "apt"


class PulpAptRemoteContext(PulpRemoteContext):
    ENTITY = "apt remote"
    ENTITIES = "apt remotes"
    HREF = "deb_apt_remote_href"
    ID_PREFIX = "remotes_deb_apt"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "apt"


class PulpDebPackageContext(PulpContentContext):
    ENTITY = "deb package"
    ENTITIES = "deb packages"
    HREF = "deb_package_href"
    ID_PREFIX = "content_deb_packages"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "package"
    CAPABILITIES: t.ClassVar[dict[str, list[PluginRequirement]]] = {"upload": []}


class PulpDebReleaseComponentContext(PulpContentContext):
    ENTITY = "deb release component"
    ENTITIES = "deb release components"
    HREF = "deb_release_component_href"
    ID_PREFIX = "content_deb_release_components"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "release_component"


class PulpDebReleaseArchitectureContext(PulpContentContext):
    ENTITY = "deb release architecture"
    ENTITIES = "deb release architectures"
    HREF = "deb_release_architecture_href"
    ID_PREFIX = "content_deb_release_architectures"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "release_architecture"


class PulpDebPackageReleaseComponentContext(PulpContentContext):
    ENTITY = "deb package release component"
    ENTITIES = "deb package release components"
    HREF = "deb_package_release_component_href"
    ID_PREFIX = "content_deb_package_release_components"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "package_release_component"


class PulpDebSourcePackageContext(PulpContentContext):
    """A source package: its .dsc (an artifact) with every file it names (artifacts already in Pulp)."""

    ENTITY = "deb source package"
    ENTITIES = "deb source packages"
    HREF = "deb_source_package_href"
    ID_PREFIX = "content_deb_source_packages"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "source_package"


class PulpDebSourcePackageReleaseComponentContext(PulpContentContext):
    ENTITY = "deb source package release component"
    ENTITIES = "deb source package release components"
    HREF = "deb_source_package_release_component_href"
    ID_PREFIX = "content_deb_source_release_components"
    NEEDS_PLUGINS = _DEB
    PLUGIN = "deb"
    RESOURCE_TYPE = "source_release_component"
