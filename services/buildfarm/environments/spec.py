"""What a build environment is made of, and the name of that recipe.

An environment is (distribution, architecture, mirror, package set): the recipe.  Two makings of
the same recipe at different times can differ (the mirror moved on), so the recipe's key only
finds the *current* environment of that recipe; the environment's identity in every input key
is the digest of what was made (:mod:`buildfarm.environments.cache`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from buildfarm.model.settings import DEFAULT_ENV_PACKAGES

TOOLCHAIN = tuple(DEFAULT_ENV_PACKAGES)
"""Preinstalled in every environment: what nearly every Debian package's Build-Depends names
(debhelper pulls dh-autoreconf, dh-strip-nondeterminism, gettext, man-db, ...), so a step installs
only what is particular to its package."""


@dataclass(frozen=True)
class EnvironmentSpec:
    """The recipe of one environment (``mmdebstrap --variant=buildd`` plus ``packages``)."""

    distribution: str
    architecture: str
    mirror: str
    packages: tuple[str, ...] = TOOLCHAIN
    keep_lists: bool = True
    """The mirror's apt lists stay in the environment, so no step downloads the Debian indexes."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "packages", tuple(sorted(set(self.packages))))

    def key(self) -> str:
        """Stable name of the recipe (16 hex digits of the sha256 of its fields)."""
        blob = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def as_dict(self) -> dict[str, object]:
        return {
            "distribution": self.distribution,
            "architecture": self.architecture,
            "mirror": self.mirror,
            "packages": list(self.packages),
            "keep_lists": self.keep_lists,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> EnvironmentSpec:
        packages = data.get("packages", [])
        return cls(
            distribution=str(data["distribution"]),
            architecture=str(data["architecture"]),
            mirror=str(data["mirror"]),
            packages=tuple(str(p) for p in packages) if isinstance(packages, list) else (),
            keep_lists=bool(data.get("keep_lists", True)),
        )

    def describe(self) -> str:
        extra = ",".join(self.packages) or "-"
        return f"{self.distribution}/{self.architecture} from {self.mirror} + {extra}"
