"""Keeping a machine's environments fresh and its cache bounded: refresh, then prune.

* :func:`refresh_environment` makes the farm's recipe afresh from the mirror (security updates);
  builds submitted from then on name the new digest, so nothing is reused from before, while an
  unchanged mirror gives the same bytes and changes nothing.  The scheduler runs it on the
  setting ``env_refresh_schedule`` (empty: never; ``buildfarm env refresh`` by hand).
* :func:`prune_environments` removes environments no recorded build names (a build the retention
  sweep has not expired yet may still be retried, so its environment stays), that are not
  current and older than ``min_age_seconds``, and the dependency layers of every environment
  that is gone (or unused past the same age); the layers' size bound does the rest.
  It runs after each refresh and after the daily retention sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from buildfarm.backends.base import PackageCache
from buildfarm.environments.cache import Environment, Progress
from buildfarm.environments.layers import Layer
from buildfarm.environments.routed import routed_environments
from buildfarm.environments.settings import cache_for, layers_for
from buildfarm.environments.usage import digests_named_by_builds
from buildfarm.model.settings import Settings

PRUNE_MIN_AGE_SECONDS = 24 * 3600.0
"""The cache is shared by the machine's farms: another farm's build may name a young environment
this farm's database does not know (``buildfarm env prune --min-age-hours`` for the CLI)."""


@dataclass
class PruneReport:
    environments: list[Environment] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return sum(e.size for e in self.environments) + sum(layer.size for layer in self.layers)

    def describe(self) -> str:
        return (
            f"removed {len(self.environments)} environment(s) and {len(self.layers)} dependency "
            f"layer(s), {self.bytes_freed >> 20} MiB"
        )


def uses_environment_cache(settings: Settings) -> bool:
    """Whether this farm's steps run in cached environments (sbuild or unshare without a fixed
    tarball)."""
    return settings.builders.runner in ("sbuild", "unshare") and settings.buildenv.base_tarball is None


def refresh_environment(
    settings: Settings, packages: PackageCache, progress: Progress | None = None
) -> tuple[Environment, bool]:
    """(the recipe's environment made afresh from the mirror as ``packages`` routes it, whether it
    is a new one); with the Pulp package cache, its indexes of the mirror are synced first."""
    cache, spec = routed_environments(settings, packages, refresh=True)
    before = {e.digest for e in cache.entries() if e.current}
    env = cache.refresh(spec, progress)
    return env, env.digest not in before


def prune_environments(settings: Settings, min_age_seconds: float = PRUNE_MIN_AGE_SECONDS) -> PruneReport:
    """Remove what no kept build names (see the module's docstring)."""
    cache = cache_for(settings)
    report = PruneReport(cache.prune(digests_named_by_builds(settings), min_age_seconds=min_age_seconds))
    layers = layers_for(settings)
    if layers is not None:
        live = {e.digest for e in cache.entries()}
        report.layers = layers.cache.prune(live, min_age_seconds=min_age_seconds)
    return report
