"""The farm as the engine sees it: settings, state, the two stores, a dispatcher and its parts.

The engine and the feature packages never build a concrete backend or runner themselves: the
runners, the registry client and the backup target come from :class:`FarmParts`, which
:mod:`buildfarm.wiring` implements from settings (an import-linter contract holds the engine to
the interfaces in :mod:`buildfarm.backends.base` and :mod:`buildfarm.runners.base`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

from buildfarm.backends.base import ArtifactStore, BackupTarget, ImageRegistry, PackageRepository
from buildfarm.model.settings import Settings
from buildfarm.model.types import StepKind
from buildfarm.runners.base import Runner
from buildfarm.state.db import Database


class Dispatcher(Protocol):
    """How the engine asks for work to happen somewhere (Celery in every profile)."""

    def advance(self, build_id: int) -> None:
        """Ask for :func:`buildfarm.engine.advance.advance_build` to run for this build."""
        ...

    def run_step(self, step_id: int, attempt: int, kind: str, node: str | None = None) -> None:
        """Send a ticket for this ready step (``attempt`` makes the message id unique); ``kind``
        is its build's kind, whose priority class decides which queued ticket a free node takes
        first; ``node``: only that node may take it (a step that requires its labels), else any."""
        ...

    def check(self) -> None:
        """Raise ServiceUnavailableError if messages cannot be sent now (checked before recording work)."""
        ...

    def prepare_environment(self) -> None:
        """Ask some node to make the package runner's build environment (a submit found none)."""
        ...


class FarmParts(Protocol):
    """The concrete pieces chosen from settings, built on first use (:class:`buildfarm.wiring.Wiring`)."""

    def runner(self, store: ArtifactStore) -> Runner:
        """The runner of this node's package steps (remote runners hand the store's URLs to pods)."""
        ...

    def image_runner(self) -> Runner:
        """The runner of image steps outside Kubernetes (buildah on the node)."""
        ...

    def registry(self) -> ImageRegistry:
        """The farm's container registry (setting ``registry_url``; refused when there is none)."""
        ...

    def backup_target(self) -> BackupTarget:
        """The configured backup target (setting ``backup_target``)."""
        ...


@dataclass
class FarmContext:
    settings: Settings
    db: Database
    store: ArtifactStore
    repo: PackageRepository
    dispatcher: Dispatcher
    parts: FarmParts

    @cached_property
    def runner(self) -> Runner:
        """The runner of package steps on this node."""
        return self.parts.runner(self.store)

    @cached_property
    def image_runner(self) -> Runner:
        """The runner of image steps: the kubernetes runner handles both kinds itself; every
        other profile builds images with buildah on the node."""
        if self.settings.builders.runner == "kubernetes":
            return self.runner
        return self.parts.image_runner()

    def runner_for(self, kind: StepKind) -> Runner:
        """The runner of a step of this kind."""
        return self.image_runner if kind == StepKind.IMAGE else self.runner

    @property
    def work_root(self) -> Path:
        path = self.settings.state_dir / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path
