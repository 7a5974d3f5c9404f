"""The recipe and the cache a farm's settings name (one place, for the runner, the CLI and bench)."""

from __future__ import annotations

import functools
import subprocess

from buildfarm.environments.cache import EnvironmentCache
from buildfarm.environments.layers import LayerCache
from buildfarm.environments.spec import BUILDER_PACKAGES, EnvironmentSpec
from buildfarm.environments.steplayer import LayerPolicy
from buildfarm.model.settings import Settings


@functools.cache
def host_architecture() -> str:
    """This machine's Debian architecture (environments are made for the node they run on)."""
    try:
        return subprocess.run(
            ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "amd64"


def spec_for(settings: Settings, packages: tuple[str, ...] | None = None) -> EnvironmentSpec:
    """The recipe of this farm's package builds (``packages`` replaces the setting's list; the
    ``unshare`` runner's adds what its entrypoint needs, as the package-builder image does)."""
    if packages is None:
        packages = tuple(settings.buildenv.packages)
        if settings.builders.runner == "unshare":
            packages += BUILDER_PACKAGES
    return EnvironmentSpec(
        distribution=settings.buildenv.distribution,
        architecture=host_architecture(),
        mirror=settings.buildenv.mirror,
        packages=tuple(packages),
    )


def cache_for(settings: Settings) -> EnvironmentCache:
    """The environment cache of this machine (``<cache dir>/environments``), fetching through
    the farm's package cache when there is one."""
    return EnvironmentCache(settings.buildenv.cache_dir / "environments", proxy=settings.buildenv.apt_proxy)


def layers_for(settings: Settings) -> LayerPolicy | None:
    """This machine's dependency layers (``<cache dir>/layers``), None when they are off
    (``env_layer_max_bytes`` 0)."""
    env = settings.buildenv
    if env.layer_max_bytes == 0:
        return None
    return LayerPolicy(
        cache=LayerCache(env.cache_dir / "layers", env.layer_max_bytes),
        views=env.cache_dir / "apt-views",
        min_packages=env.layer_min_packages,
        proxy=env.apt_proxy,
    )
