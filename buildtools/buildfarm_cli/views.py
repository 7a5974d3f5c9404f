"""How the CLI prints a listed build as JSON: its fields, with ``steps`` as counts by state.

Every other answer is printed as the wire model both clients return
(:mod:`buildfarm_client.models`), so the local and the remote farm print alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buildfarm_client.models import BuildView


def summary_dict(build: BuildView) -> dict[str, Any]:
    """A build as ``build list --output json`` prints it: its fields, ``steps`` as counts."""
    return build.model_dump(mode="json", exclude={"steps"}) | {"steps": build.counts}
