"""The Runner interface: turn one step's source into packages, streaming its log."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from buildfarm.model.errors import TemporaryError
from buildfarm.model.types import DEFAULT_IMAGE_BUILDER, AptSource, ImageBuilder, StepKind


class EnvironmentNotReady(TemporaryError):
    """The runner's build environment is not made yet (first use, or pruned or found corrupt).
    Making it takes minutes, never inside a request: the submitter asks a worker to make it
    (:meth:`buildfarm.engine.context.Dispatcher.prepare_environment`) and tries again."""


@dataclass(frozen=True)
class ImageSpec:
    """What an image step builds: a Dockerfile in its context, pushed under the build's namespace."""

    name: str  # the image step's name in the manifest (unique within a build)
    dockerfile: str = "Dockerfile"  # relative to the context (the step's source tarball)
    builder: ImageBuilder = DEFAULT_IMAGE_BUILDER
    build_args: tuple[tuple[str, str], ...] = ()
    destination: str = ""  # full reference to push: <registry>/<project>/<branch>/<build-id>/<name>:latest


@dataclass(frozen=True)
class BuiltImage:
    """An image a step pushed: its reference and manifest digest (``sha256:...``)."""

    reference: str
    digest: str
    size: int = 0


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
    source_sha256: str = ""  # the tarball's content address (remote runners fetch it themselves)
    kind: StepKind = StepKind.PACKAGE
    image: ImageSpec | None = None  # set for image steps
    node: str | None = None  # the node whose worker took the step (pods are pinned to it)
    project: str = ""
    branch: str = ""
    environment_id: str = ""  # the environment the step's input key names ("": the runner's current)
    host_arch: str = ""  # Debian architecture to build for ("": the node's own); another one: cross-build
    arch_all: bool = True  # also build the Architecture: all binaries (a source's primary step only)
    requires: str = ""  # the node labels the step needs ("arch=arm64,gpu"): a pod's nodeSelector


@dataclass
class StepResult:
    """The outcome; ``outputs`` are the files to store (.deb, .udeb, .buildinfo)."""

    ok: bool
    outputs: list[Path]
    error: str | None = None
    images: list[BuiltImage] = field(default_factory=list)  # image steps: what was pushed
    killed_by: str | None = None
    """Set when the builder was killed by a signal the farm did not send (``SIGKILL``: the OOM
    killer, an operator): nothing is known about the package, so the step is built again."""
    layer: str | None = None
    """The dependency layer outcome of the step's environment (``hit:<key>``, ``miss:<key>``,
    ``none``, ``none:<key>``, ``failed``; :class:`buildfarm.environments.StepTarball`), None
    where the runner has no layers: recorded on the step (``build show``)."""


def attempt_dirname(build_id: int, safe_step_name: str, attempt: int) -> str:
    """The name of an attempt's own directories (its work directory, its sbuild chroot's parent):
    what the reaper parses to tell a live attempt's directory from a dead one's."""
    return f"{build_id}-{safe_step_name}-{attempt}"


def chroot_root(tmpdir: Path | None, state_dir: Path) -> Path:
    """This farm's own directory for sbuild's chroots: under ``tmpdir`` (setting ``sbuild_tmpdir``,
    ``/dev/shm`` by default; else the system's temporary directory, sbuild's own default) a name
    derived from the farm's state directory.  Each attempt unpacks its chroot in a subdirectory
    named after it (:func:`attempt_dirname`), so the reaper can remove the
    ~0.6 GB a killed sbuild leaves without touching another farm's or a person's ``sbuild.*``.
    Not inside the state directory: the chroot's mapped users must traverse to it, and the state
    directory is private to its owner."""
    tag = hashlib.sha256(str(state_dir.absolute()).encode()).hexdigest()[:12]
    return (tmpdir or Path(tempfile.gettempdir())) / f"buildfarm-{tag}"


REMOVE_TIMEOUT_SECONDS = 600


def remove_mapped_tree(path: Path) -> None:
    """Remove a tree whose files belong to the builds' mapped users (a chroot, an attempt's
    directory under the chroot root): a non-root worker removes them from inside a namespace
    with the same mapping (``shutil.rmtree`` cannot enter a subordinate id's private
    directory); root removes them as they are."""
    if os.geteuid() != 0 and path.exists():
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # no unshare, no subordinate ids
            subprocess.run(
                ["unshare", "--map-auto", "--map-root-user", "rm", "-rf", "--one-file-system", str(path)],
                check=False,
                capture_output=True,
                timeout=REMOVE_TIMEOUT_SECONDS,
            )
    shutil.rmtree(path, ignore_errors=True)  # what is left: the worker's own files


@dataclass(frozen=True)
class BuilderObject:
    """A builder Job or pod a remote runner started, as the orphan reaper sees it: the attempt it
    belongs to (None when its labels are not the farm's shape: nothing can follow it)."""

    kind: Literal["job", "pod"]
    name: str
    attempt: tuple[int, str, int] | None  # (build id, step name, attempt)


@runtime_checkable
class ListsBuilders(Protocol):
    """A runner whose builders live outside the worker (kubernetes): listed and deleted by the
    orphan reaper (:func:`buildfarm.engine.builders.reap_builders`)."""

    def list_builders(self) -> list[BuilderObject]: ...

    def delete_builder(self, builder: BuilderObject) -> None: ...


@runtime_checkable
class CrossBuilds(Protocol):
    """A runner that builds packages for other architectures than its node's (sbuild ``--host``
    in a cross environment): what a manifest's foreign ``architectures`` need."""

    def native_architecture(self) -> str:
        """The Debian architecture its builds run on (and build for, without ``--host``)."""
        ...

    def cross_environment_id(self, host_arch: str) -> str:
        """Identity of the cross environment for ``host_arch`` (made now if missing), part of
        the input key of every step cross-built for it."""
        ...


@runtime_checkable
class PreparesEnvironment(Protocol):
    """A runner whose environment is made on the node, on first use (sbuild's environment cache):
    a worker makes it when a submit found none (:class:`EnvironmentNotReady`)."""

    def prepare_environment(self) -> None: ...


class Runner(Protocol):
    name: str

    def environment_id(self) -> str:
        """Identity of the build environment (base tarball or image digest), part of input keys.
        Answers from what exists (it runs inside API requests): :class:`EnvironmentNotReady`
        when the environment is still to be made."""
        ...

    def run(self, job: StepJob) -> StepResult: ...
