"""The farm's domain types: the closed sets a build is described by, and the staging source.

Every layer speaks these, from the manifest to the ORM columns, the engine's decisions, the
runners and the API, so no layer spells a state, a kind or a builder again as a bare string,
and the database stores what they mean in columns of their own (migration 0009) instead of
encoding it in another value (an ``image:`` filename prefix, an apt line parsed back, a step's
``error`` standing for a state).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class BuildKind(StrEnum):
    """Why a build was made; retention and publication follow from it."""

    RELEASE = "release"
    NIGHTLY = "nightly"
    ON_DEMAND = "on-demand"
    PERSONAL = "personal"


class BuildState(StrEnum):
    RUNNING = "running"
    PUBLISHING = "publishing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_BUILD_STATES = frozenset({BuildState.SUCCEEDED, BuildState.FAILED, BuildState.CANCELLED})


class StepState(StrEnum):
    PENDING = "pending"  # waits for the steps it depends on
    READY = "ready"  # released to the queue, waits for a node
    RUNNING = "running"  # a node holds its lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a step it depends on failed or was cancelled


TERMINAL_STEP_STATES = frozenset(
    {StepState.SUCCEEDED, StepState.FAILED, StepState.CANCELLED, StepState.SKIPPED}
)


class StepKind(StrEnum):
    PACKAGE = "package"  # a Debian source package: outputs are .deb/.udeb/.buildinfo files
    IMAGE = "image"  # a container image: one output of kind IMAGE, the reference it was pushed as


class ImageBuilder(StrEnum):
    """Which kind of image builder an image step needs (not which program runs it)."""

    KANIKO = "kaniko"  # the farm's daemonless builder: kaniko pods, buildah in the local profile
    SYSBOX = "sysbox"  # a pod in the sysbox runtime class (docker inside the build)
    LOCAL = "local"  # buildah on the worker node itself


DEFAULT_IMAGE_BUILDER = ImageBuilder.KANIKO
"""What an image step of a manifest gets when it names no builder: every profile can run it."""


class RunnerKind(StrEnum):
    """The runners that execute steps (``Runner.name``); the first four are package runners."""

    SBUILD = "sbuild"  # a fresh unshare chroot per step
    HOST = "host"  # dpkg-buildpackage on the worker itself
    KUBERNETES = "kubernetes"  # one builder pod per step (packages and images)
    UNSHARE = "unshare"  # a builder pod's buildfarm-step in one user-namespace chroot per step, on the node
    BUILDAH = "buildah"  # image steps with buildah on the worker (the local profile)


PACKAGE_SUFFIXES = (".deb", ".udeb")
"""Binary packages: what a package step must make, what a repository publishes."""
FILE_OUTPUT_SUFFIXES = (*PACKAGE_SUFFIXES, ".buildinfo")
"""The files a package step's runner hands back; every other file of the build stays behind."""


class OutputKind(StrEnum):
    """What a step's output row is: a file in the artifact store, or an image in the registry."""

    DEB = "deb"
    UDEB = "udeb"
    BUILDINFO = "buildinfo"
    IMAGE = "image"  # ``StepOutput.filename`` is the pushed reference, ``sha256`` its manifest digest

    @classmethod
    def of_file(cls, filename: str) -> OutputKind:
        """The kind of a built file, from its suffix (the runners accept no others)."""
        for suffix in FILE_OUTPUT_SUFFIXES:
            if filename.endswith(suffix):
                return cls(suffix.removeprefix("."))
        raise ValueError(f"{filename!r} is not a {', '.join(FILE_OUTPUT_SUFFIXES)} file")

    @property
    def is_package(self) -> bool:
        """A binary package a repository publishes."""
        return self in (OutputKind.DEB, OutputKind.UDEB)


@dataclass(frozen=True)
class AptSource:
    """One apt repository as a ``sources.list`` line names it. ``suite`` is ``./`` for a flat
    repository (then no components).

    ``signed_by`` (a signed repository) is where the user keeps the farm's public key: the line
    says ``[signed-by=PATH]`` and apt verifies the Release file with that key alone.  Without it
    a ``trusted`` source says ``[trusted=yes]``: apt reads it unsigned (the farm's own staging
    repositories, and every repository of a farm that has no signing key).

    A build's staging repository is stored as this structure (``Build.staging_source``, JSON),
    never as the line: the line is only written for apt.
    """

    url: str
    suite: str = "./"
    components: tuple[str, ...] = ()
    trusted: bool = True
    signed_by: str | None = None  # path of the key apt checks the Release signature with
    sources: bool = False  # the repository also has a Sources index (``deb-src`` works)

    def line(self) -> str:
        if self.signed_by is not None:
            options = f"[signed-by={self.signed_by}] "
        else:
            options = "[trusted=yes] " if self.trusted else ""
        parts = ["deb", f"{options}{self.url}", self.suite, *self.components]
        return " ".join(parts)

    def source_line(self) -> str | None:
        """The ``deb-src`` line of the same repository, when it publishes source packages."""
        return "deb-src" + self.line().removeprefix("deb") if self.sources else None

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "suite": self.suite,
            "components": list(self.components),
            "trusted": self.trusted,
            "signed_by": self.signed_by,
            "sources": self.sources,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> AptSource:
        components = value.get("components", [])
        signed_by = value.get("signed_by")
        if (
            not isinstance(value.get("url"), str)
            or not isinstance(value.get("suite", "./"), str)
            or not isinstance(components, list)
            or not all(isinstance(c, str) for c in components)
            or not (signed_by is None or isinstance(signed_by, str))
        ):
            raise ValueError(f"not an apt source: {value!r}")
        return cls(
            url=value["url"],
            suite=value.get("suite", "./"),
            components=tuple(components),
            trusted=bool(value.get("trusted", True)),
            signed_by=signed_by,
            sources=bool(value.get("sources", False)),
        )
