"""The farm's environments as its package cache routes them (issue 15 part 4).

Environments are made from the mirror the settings name, fetched through the farm's package
cache (:class:`~buildfarm.backends.base.PackageCache`, picked by :mod:`buildfarm.wiring`): a
proxy leaves the mirror as it is and makers fetch through it (local profile: apt-cacher-ng), Pulp
replaces the mirror by its own distribution of it, which then is the mirror the apt sources of
every chroot made from the environment name (signed: ``[signed-by=PATH]`` with the key the
environment holds at PATH).  The recipe records the mirror that was used (and its key), so a
farm moving to another cache makes a new environment (and its steps rebuild).
"""

from __future__ import annotations

from dataclasses import replace

from buildfarm.backends.base import DebianUpstream, PackageCache
from buildfarm.environments.cache import EnvironmentCache
from buildfarm.environments.settings import spec_for
from buildfarm.environments.spec import EnvironmentSpec
from buildfarm.model.settings import Settings


def upstream_of(spec: EnvironmentSpec) -> DebianUpstream:
    """The Debian archive a recipe downloads from (the makers take ``main`` only)."""
    return DebianUpstream(url=spec.mirror, distribution=spec.distribution, architecture=spec.architecture)


def routed_environments(
    settings: Settings,
    packages: PackageCache,
    *,
    refresh: bool = False,
    include: tuple[str, ...] | None = None,
) -> tuple[EnvironmentCache, EnvironmentSpec]:
    """This machine's environment cache and the farm's recipe, both fetching through ``packages``
    (``refresh``: the cache's indexes brought up to date first, as ``buildfarm env refresh``
    does; ``include`` replaces the setting's package list)."""
    spec = spec_for(settings, include)
    upstream = upstream_of(spec)
    route = packages.refresh(upstream) if refresh else packages.route(upstream)
    cache = EnvironmentCache(settings.buildenv.cache_dir / "environments", proxy=route.proxy)
    return cache, replace(spec, mirror=route.mirror, mirror_key=route.key or "")
