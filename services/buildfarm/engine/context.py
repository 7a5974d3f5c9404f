"""The farm as the engine sees it: settings, state, the two stores, a runner and a dispatcher."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

from buildfarm.backends.base import ArtifactStore, PackageRepository
from buildfarm.model.settings import Settings
from buildfarm.runners.base import Runner
from buildfarm.state.db import Database


class Dispatcher(Protocol):
    """How the engine asks for work to happen somewhere (Celery in every profile)."""

    def advance(self, build_id: int) -> None:
        """Ask for :func:`buildfarm.engine.advance.advance_build` to run for this build."""
        ...

    def run_step(self, step_id: int, attempt: int) -> None:
        """Ask some node to run this ready step (``attempt`` makes the message id unique)."""
        ...

    def check(self) -> None:
        """Raise ServiceUnavailableError if messages cannot be sent now (checked before recording work)."""
        ...


@dataclass
class FarmContext:
    settings: Settings
    db: Database
    store: ArtifactStore
    repo: PackageRepository
    dispatcher: Dispatcher

    @cached_property
    def runner(self) -> Runner:
        """The runner of package steps on this node."""
        from buildfarm.engine.wiring import make_runner

        return make_runner(self.settings, self.store)

    @cached_property
    def image_runner(self) -> Runner:
        """The runner of image steps: the kubernetes runner handles both kinds itself; every
        other profile builds images with buildah on the node."""
        if self.settings.builders.runner == "kubernetes":
            return self.runner
        from buildfarm.engine.wiring import make_image_runner

        return make_image_runner(self.settings)

    def runner_for(self, kind: str) -> Runner:
        """The runner of a step of this kind (``package`` or ``image``)."""
        return self.image_runner if kind == "image" else self.runner

    @property
    def work_root(self) -> Path:
        path = self.settings.state_dir / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path
