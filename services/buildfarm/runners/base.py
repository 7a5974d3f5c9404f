"""The Runner interface: turn one step's source into packages, streaming its log."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from buildfarm.backends.base import AptSource


@dataclass
class StepJob:
    """Everything a runner needs for one attempt of one step; the runner owns ``workdir``."""

    build_id: int
    step_name: str
    attempt: int
    source_tarball: Path  # deterministic .tar.gz of the package's source tree
    workdir: Path  # fresh and empty, removed by the caller afterwards
    extra_sources: list[AptSource]  # the build's staging repository, then configured mirrors
    log: Callable[[str], None]  # called once per output line, while the build runs
    cancel: threading.Event = field(default_factory=threading.Event)
    timeout_seconds: float = 3600.0


@dataclass
class StepResult:
    """The outcome; ``outputs`` are the files to store (.deb, .udeb, .buildinfo)."""

    ok: bool
    outputs: list[Path]
    error: str | None = None


class Runner(Protocol):
    name: str

    def environment_id(self) -> str:
        """Identity of the build environment (base tarball or image digest), part of input keys."""
        ...

    def run(self, job: StepJob) -> StepResult: ...
