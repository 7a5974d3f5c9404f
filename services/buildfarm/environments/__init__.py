"""Build environments as cached, content-addressed artifacts (issue 15).

An environment is made once per recipe (distribution, architecture, mirror, package set) with
mmdebstrap, with the common Debian build toolchain and the mirror's apt lists already in it, and
kept as a tarball named by its sha256.  That digest is the environment's identity in every step's
input key: a refreshed environment never reuses old outputs, an unchanged one always does.

What others may use: :class:`EnvironmentSpec` (the recipe), :class:`EnvironmentCache` (make,
find, check, prune), :class:`Environment` (one made environment), :data:`TOOLCHAIN`,
:func:`spec_for`, :func:`builder_spec`, :func:`cross_spec` and :func:`cache_for` (what the
settings name), :func:`file_digest` and
:func:`digests_named_by_builds` (what prune keeps), :func:`routed_environments` (the cache and
recipe as the farm's package cache routes them); dependency layers (:class:`LayerCache`, a
step's :func:`step_tarball` (a :class:`StepTarball`, held in use: a :class:`LayerHold`) under a
:class:`LayerPolicy`,
:func:`layers_for` the settings').
"""

from __future__ import annotations

from buildfarm.environments.cache import Environment, EnvironmentCache, EnvironmentGone
from buildfarm.environments.layers import LAYER_LOOKUPS, DependencySet, Layer, LayerCache, LayerHold
from buildfarm.environments.mmdebstrap import make_tarball
from buildfarm.environments.routed import routed_environments
from buildfarm.environments.settings import cache_for, host_architecture, layers_for, spec_for
from buildfarm.environments.spec import BUILDER_PACKAGES, TOOLCHAIN, EnvironmentSpec, builder_spec, cross_spec
from buildfarm.environments.steplayer import LayerPolicy, StepTarball, step_tarball
from buildfarm.environments.tarballs import file_digest
from buildfarm.environments.usage import digests_named_by_builds

__all__ = [
    "BUILDER_PACKAGES",
    "LAYER_LOOKUPS",
    "TOOLCHAIN",
    "DependencySet",
    "Environment",
    "EnvironmentCache",
    "EnvironmentGone",
    "EnvironmentSpec",
    "Layer",
    "LayerCache",
    "LayerHold",
    "LayerPolicy",
    "StepTarball",
    "builder_spec",
    "cache_for",
    "cross_spec",
    "digests_named_by_builds",
    "file_digest",
    "host_architecture",
    "layers_for",
    "make_tarball",
    "routed_environments",
    "spec_for",
    "step_tarball",
]
