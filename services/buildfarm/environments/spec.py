"""What a build environment is made of, and the name of that recipe.

An environment is (distribution, architecture, mirror, package set, foreign architectures): the
recipe.  A **cross environment** is the native recipe with a foreign architecture added
(``dpkg --add-architecture``, its apt lists kept) and Debian's cross toolchain for it
(:func:`cross_spec`): what ``sbuild --host=<arch>`` builds in.  Two makings of
the same recipe at different times can differ (the mirror moved on), so the recipe's key only
finds the *current* environment of that recipe; the environment's identity in every input key
is the digest of what was made (:mod:`buildfarm.environments.cache`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from buildfarm.model.settings import DEFAULT_ENV_PACKAGES

TOOLCHAIN = tuple(DEFAULT_ENV_PACKAGES)
"""Preinstalled in every environment: what nearly every Debian package's Build-Depends names
(debhelper pulls dh-autoreconf, dh-strip-nondeterminism, gettext, man-db, ...), so a step installs
only what is particular to its package."""

BUILDER_PACKAGES = ("python3", "ca-certificates")
"""Added to a recipe for the package-builder environment (:func:`builder_spec`): the entrypoint
``buildfarm-step`` is a python3 script (python3-minimal lacks tarfile, gzip, json and
http.client) and fetches over https."""


@dataclass(frozen=True)
class EnvironmentSpec:
    """The recipe of one environment (``mmdebstrap --variant=buildd`` plus ``packages``)."""

    distribution: str
    architecture: str
    mirror: str
    packages: tuple[str, ...] = TOOLCHAIN
    keep_lists: bool = True
    """The mirror's apt lists stay in the environment, so no step downloads the Debian indexes."""
    foreign_architectures: tuple[str, ...] = ()
    """Added with ``dpkg --add-architecture`` (their apt lists kept too): cross environments."""
    mirror_key: str = ""
    """The armored public key of a signed mirror (``mirror`` says ``[signed-by=PATH]``): the
    environment holds it at PATH (the farm's Pulp package cache, signed by the farm's key)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "packages", tuple(sorted(set(self.packages))))
        object.__setattr__(self, "foreign_architectures", tuple(sorted(set(self.foreign_architectures))))

    def key(self) -> str:
        """Stable name of the recipe (16 hex digits of the sha256 of its fields)."""
        blob = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "distribution": self.distribution,
            "architecture": self.architecture,
            "mirror": self.mirror,
            "packages": list(self.packages),
            "keep_lists": self.keep_lists,
        }
        if self.foreign_architectures:  # absent for native recipes: their keys stay what they were
            data["foreign_architectures"] = list(self.foreign_architectures)
        if self.mirror_key:  # absent for unsigned mirrors, likewise
            data["mirror_key"] = self.mirror_key
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> EnvironmentSpec:
        packages = data.get("packages", [])
        foreign = data.get("foreign_architectures", [])
        return cls(
            distribution=str(data["distribution"]),
            architecture=str(data["architecture"]),
            mirror=str(data["mirror"]),
            packages=tuple(str(p) for p in packages) if isinstance(packages, list) else (),
            keep_lists=bool(data.get("keep_lists", True)),
            foreign_architectures=tuple(str(a) for a in foreign) if isinstance(foreign, list) else (),
            mirror_key=str(data.get("mirror_key", "")),
        )

    def describe(self) -> str:
        extra = ",".join(self.packages) or "-"
        arches = "+".join((self.architecture, *self.foreign_architectures))
        return f"{self.distribution}/{arches} from {self.mirror} + {extra}"


def builder_spec(spec: EnvironmentSpec) -> EnvironmentSpec:
    """The package-builder environment of a recipe: plus what ``buildfarm-step`` needs (the
    environment of the builder image, and of the ``unshare`` runner's chroots)."""
    return replace(spec, packages=(*spec.packages, *BUILDER_PACKAGES))


def cross_packages(host_arch: str) -> tuple[str, ...]:
    """Debian's cross toolchain for ``host_arch`` and its C library (what sbuild's cross builds
    always install: ``crossbuild-essential-<arch>:native``, ``libc-dev:<arch>``)."""
    return (f"crossbuild-essential-{host_arch}", f"libc6-dev:{host_arch}")


def cross_spec(native: EnvironmentSpec, host_arch: str) -> EnvironmentSpec:
    """The cross environment for ``host_arch``: the native recipe, the foreign architecture and
    its cross toolchain.  Its own recipe key and digest: a cross step's input key names it."""
    return replace(
        native,
        packages=(*native.packages, *cross_packages(host_arch)),
        foreign_architectures=(*native.foreign_architectures, host_arch),
    )
