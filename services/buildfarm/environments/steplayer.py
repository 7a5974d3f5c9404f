"""The tarball a step starts from: its environment, or that environment's dependency layer.

Called by the sbuild runner for every step, after the step's input key chose the environment:

1. the environment already satisfies the Build-Depends (``dpkg-checkbuilddeps``, ~0.1 s):
   the environment without its archive lists (the layer of the empty set, made once), marked
   :attr:`StepTarball.satisfied`: sbuild runs without a dependency resolver (no dummy package,
   no apt at all; dpkg-buildpackage in the chroot still checks the Build-Depends);
2. else the set apt would install is resolved (:mod:`.resolve`), keeping only the environment's
   archive packages: none (only the farm's own packages): as 1; fewer than ``min_packages``:
   the environment with its lists (sbuild installs them, cheaper than a layer);
3. else the layer of exactly that set (:mod:`.layers`): found (hit) or made now (miss).

Whatever goes wrong on the way (apt cannot resolve, the layer cannot be made faithfully) leaves
the step in its environment, where sbuild does what it always did and explains any failure.
Each outcome is one line in the step's log, counted (``buildfarm_env_layer_lookups``) and
returned (:class:`StepTarball`) for the step's record (``build show``'s layer column).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from buildfarm.environments.cache import Environment
from buildfarm.environments.layermaker import UnfaithfulLayer, installed_in, make_layer, make_lean
from buildfarm.environments.layers import LAYER_LOOKUPS, DependencySet, LayerCache, LayerHold
from buildfarm.environments.resolve import (
    AptOnView,
    UnresolvableError,
    apt_view,
    build_depends_met,
    dependency_string,
    unlike_host,
)
from buildfarm.model.errors import BuildfarmError
from buildfarm.model.types import AptSource


@dataclass(frozen=True)
class StepTarball:
    """What a step unpacks, which layer outcome chose it, and whether it already has every
    Build-Depends of the step (then sbuild has nothing to install: the runner turns its resolver
    off); a layer stays in use (no eviction removes it) until :meth:`release`, called once the
    step's sbuild has ended."""

    path: Path
    result: str = ""  # hit | miss | none | failed (buildfarm_env_layer_lookups); "": no lookup
    key: str = ""  # the layer's short id ("": the bare environment)
    hold: LayerHold | None = None
    satisfied: bool = False

    def release(self) -> None:
        if self.hold is not None:
            self.hold.release()

    @property
    def label(self) -> str:
        """``result:key``, or ``result`` when the step runs in the bare environment."""
        return f"{self.result}:{self.key}" if self.key else self.result


@dataclass(frozen=True)
class LayerPolicy:
    """Where layers live and when a step gets one (settings ``env_layer_*``)."""

    cache: LayerCache
    views: Path  # the environments' apt state, taken out once per environment
    min_packages: int = 5
    proxy: str | None = None  # the farm's package cache


def step_tarball(
    env: Environment,
    dsc: Path,
    extra: Sequence[AptSource],
    policy: LayerPolicy,
    *,
    work: Path,
    log: Callable[[str], None],
    scratch: Path | None = None,
) -> StepTarball:
    """The tarball the step's sbuild unpacks (``work``: a fresh directory of the step's own;
    ``scratch``: where a new layer is unpacked, tmpfs at best)."""
    view = apt_view(env.path, env.digest, policy.views)
    unlike = unlike_host(view)
    if unlike:  # resolved on the host: only where the host's apt decides as the chroot's would
        return _none(env, log, unlike)
    if build_depends_met(view, dsc):
        # the lean layer or, should it fail, the environment: the same installed packages
        return replace(_lean(env, policy, log, "the environment has every Build-Depends"), satisfied=True)
    hosts = sorted({urlsplit(s.url).hostname or "" for s in extra} - {""})
    apt = AptOnView(view, work, extra, policy.proxy, hosts)
    try:
        apt.prepare()
        depends, conflicts = dependency_string(dsc)
        resolved = apt.resolve(depends, conflicts)
    except UnresolvableError as exc:
        return _none(env, log, f"apt cannot resolve the Build-Depends ({exc})")
    except BuildfarmError as exc:
        return _failed(env, log, str(exc))
    archive_urls = tuple(apt.archive_urls())
    archive = [p for p in resolved if archive_urls and p.uri.startswith(archive_urls)]
    if not archive:  # only the farm's own packages to install, whose dependencies the environment has
        return _lean(env, policy, log, "only the farm's own packages to install")
    if len(archive) < policy.min_packages:
        return _none(env, log, f"{len(archive)} package(s) from the archive, below env_layer_min_packages")
    deps = DependencySet(env.digest, tuple(p.pin() for p in archive))

    def make(dest: Path) -> None:
        log(f"buildfarm: dependency layer {deps.key()[:12]}: miss, installing {len(archive)} packages once")
        debs = apt.download(archive)
        before = installed_in(view / "var" / "lib" / "dpkg")
        make_layer(env.path, debs, deps.packages, dest, before=before, scratch=scratch)

    try:
        hold = policy.cache.acquire(deps, make)
    except (BuildfarmError, UnfaithfulLayer, OSError) as exc:
        return _failed(env, log, str(exc))
    layer, hit = hold.layer, hold.hit
    LAYER_LOOKUPS.labels("hit" if hit else "miss").inc()
    log(
        f"buildfarm: dependency layer {layer.short}: {'hit' if hit else 'miss (made now)'}, "
        f"{len(deps.packages)} archive packages preinstalled on environment {env.short} "
        f"({layer.size >> 20} MiB)"
    )
    # Everything apt would install comes from the archive, so the layer holds all of it: sbuild
    # has nothing left to install (no resolver).  Not with Build-Conflicts (apt might remove).
    satisfied = len(archive) == len(resolved) and not conflicts
    return StepTarball(layer.path, "hit" if hit else "miss", layer.short, hold, satisfied)


def _lean(env: Environment, policy: LayerPolicy, log: Callable[[str], None], why: str) -> StepTarball:
    deps = DependencySet(env.digest, ())
    try:
        hold = policy.cache.acquire(deps, lambda dest: make_lean(env.path, dest))
    except (BuildfarmError, OSError) as exc:
        return _failed(env, log, str(exc))
    layer = hold.layer
    LAYER_LOOKUPS.labels("none").inc()
    log(
        f"buildfarm: dependency layer: none ({why}); environment {env.short} without its archive "
        f"lists ({layer.short})"
    )
    return StepTarball(layer.path, "none", layer.short, hold)


def _none(env: Environment, log: Callable[[str], None], why: str) -> StepTarball:
    LAYER_LOOKUPS.labels("none").inc()
    log(f"buildfarm: dependency layer: none ({why}); environment {env.short}")
    return StepTarball(env.path, "none")


def _failed(env: Environment, log: Callable[[str], None], why: str) -> StepTarball:
    LAYER_LOOKUPS.labels("failed").inc()
    log(f"buildfarm: dependency layer: failed, using environment {env.short}: {why}")
    return StepTarball(env.path, "failed")
