"""The data both clients return, beyond the engine's own BuildView/StepView and AptSource.

A listed build carries only its step counts (the API lists builds without their steps), so
:class:`BuildSummary` keeps the counts it was given; everything that prints a list reads
``build.counts`` and works the same for a full view and a summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from buildfarm.engine.control import BuildView

BUILD_FIELDS = tuple(f.name for f in fields(BuildView) if f.name != "steps")


@dataclass
class BuildSummary(BuildView):
    """A build as a listing shows it: no steps, only how many are in each state."""

    step_counts: dict[str, int] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.step_counts)


@dataclass(frozen=True)
class RepoKeyView:
    """The farm's repository signing key, and where its apt lines expect users to keep it."""

    fingerprint: str
    public_key: str  # armored
    signed_by: str


@dataclass(frozen=True)
class UserView:
    name: str
    admin: bool = False
    service: bool = False


def summary_dict(build: BuildView) -> dict[str, Any]:
    """A build as ``build list --output json`` prints it: its fields, ``steps`` as counts."""
    return {name: getattr(build, name) for name in BUILD_FIELDS} | {"steps": build.counts}
