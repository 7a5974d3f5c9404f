"""What the node's chroot runners share: a step's environment, its tarball, its chroot directory.

The ``sbuild`` runner (:mod:`buildfarm.runners.sbuild`) and the ``unshare`` runner
(:mod:`buildfarm.runners.unshare`) both build each step in a fresh chroot made from a tarball:
the environment the step's input key names, from the farm's environment cache (or a fixed base
tarball), or that environment's dependency layer (:func:`buildfarm.environments.step_tarball`,
which also says whether the tarball already has every Build-Depends: then no apt runs at all).
The environment's identity in input keys is ``<runner>:<distribution>:<tarball sha256>``.  Each
attempt unpacks into a directory of its own under the farm's chroot root
(:func:`buildfarm.runners.base.chroot_root`, tmpfs by default), named after the attempt so the
reaper removes what a killed attempt left.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from buildfarm.environments import (
    Environment,
    EnvironmentCache,
    EnvironmentSpec,
    LayerPolicy,
    StepTarball,
    cross_spec,
    file_digest,
    host_architecture,
    step_tarball,
)
from buildfarm.model.errors import PermanentError
from buildfarm.model.names import to_safe
from buildfarm.model.types import AptSource
from buildfarm.runners.base import EnvironmentNotReady, StepJob, StepResult, attempt_dirname
from buildfarm.runners.process import describe_failure, run_streaming
from buildfarm.runners.sourcepkg import unpack_step_source

ENVIRONMENT_RETRY_SECONDS = 120.0
"""What a submit that found no environment is told to wait: mmdebstrap takes ~1-3 min."""


def tarball_digest(path: Path) -> str:
    """sha256 of the tarball, cached beside it (keyed by size and mtime: hashing 445 MB takes ~1 s)."""
    return file_digest(path)


def farm_hosts(extra_sources: Sequence[AptSource]) -> list[str]:
    """The hosts of the farm's own repositories (a build's extra sources): apt reaches them
    directly, never through the package cache (their indexes change with every build)."""
    return sorted({urlsplit(s.url).hostname or "" for s in extra_sources} - {""})


def apt_proxy_conf(proxy: str, direct_hosts: Sequence[str]) -> str:
    """The apt.conf lines that send a chroot's apt through the farm's package cache, except to
    ``direct_hosts`` (what sbuildrc writes from BUILDFARM_APT_PROXY and BUILDFARM_APT_DIRECT)."""
    lines = [f'Acquire::http::Proxy "{proxy}";']
    lines += [f'Acquire::http::Proxy::{host} "DIRECT";' for host in direct_hosts]
    return "\n".join(lines) + "\n"


def make_dir(path: Path, tries: int = 3) -> None:
    """``mkdir -p`` that survives another attempt removing the (empty) parent at the same moment."""
    for _ in range(tries - 1):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            continue
    path.mkdir(parents=True, exist_ok=True)


def step_dsc(job: StepJob) -> Path | StepResult:
    """The .dsc of the step's source package, unpacked into ``<workdir>/src``: what the
    dependency layers resolve; a bare tree (a step recorded before source packages) gets one
    made.  A failed result when it cannot be made."""
    dsc = unpack_step_source(job.source_tarball, job.workdir / "src")
    if dsc is not None:
        return dsc
    outcome = run_streaming(
        ["dpkg-source", "-b", "src"],
        cwd=job.workdir,
        log=job.log,
        cancel=job.cancel,
        timeout_seconds=job.timeout_seconds,
    )
    if outcome.returncode != 0:
        failure = describe_failure("dpkg-source -b", outcome, job.timeout_seconds)
        return StepResult(False, [], failure, killed_by=outcome.killed_by)
    dscs = sorted(job.workdir.glob("*.dsc"))
    if len(dscs) != 1:
        return StepResult(False, [], f"dpkg-source made {len(dscs)} .dsc files, expected 1")
    return dscs[0]


class EnvironmentRunner:
    """The environments of a chroot runner (subclasses set ``name`` and ``run``).

    With ``environments`` (and its recipe ``spec``) the environment comes from the farm's cache:
    made on first use, found by digest for each step.  Without, ``base_tarball`` is used as is.
    """

    name: str = ""

    def __init__(
        self,
        base_tarball: Path | None,
        distribution: str,
        tmpdir: Path | None = None,
        *,
        environments: EnvironmentCache | None = None,
        spec: EnvironmentSpec | None = None,
        apt_proxy: str | None = None,
        layers: LayerPolicy | None = None,
    ) -> None:
        if environments is not None and spec is None:
            raise ValueError("an environment cache needs its recipe (spec)")
        self.base_tarball = base_tarball
        self.distribution = distribution
        self.tmpdir = tmpdir
        self.environments = environments
        self.spec = spec
        self.apt_proxy = apt_proxy
        self.layers = layers

    def _identity(self, digest: str) -> str:
        return f"{self.name}:{self.distribution}:{digest}"

    def environment_id(self) -> str:
        """The identity of the current environment, from what the cache holds: never made here
        (this runs inside an API request), :class:`EnvironmentNotReady` when there is none."""
        if self.environments is not None and self.spec is not None:
            env = self.environments.current(self.spec)
            if env is None:
                raise EnvironmentNotReady(
                    f"the build environment {self.spec.describe()} is not made yet (first use, or pruned "
                    "or found corrupt): a worker is making it, which takes a few minutes; submit again then",
                    retry_after=ENVIRONMENT_RETRY_SECONDS,
                )
            return self._identity(env.digest)
        if self.base_tarball is None or not self.base_tarball.is_file():
            raise PermanentError(
                f"the {self.name} base tarball {self.base_tarball} does not exist: `buildfarm start` makes it"
            )
        return self._identity(tarball_digest(self.base_tarball))

    def native_architecture(self) -> str:
        return self.spec.architecture if self.spec is not None else host_architecture()

    def cross_environment_id(self, host_arch: str) -> str:
        if self.environments is None or self.spec is None:
            raise PermanentError(
                f"cross-building for {host_arch} needs the farm's environment cache, not the fixed "
                f"base tarball {self.base_tarball} (unset base_tarball)"
            )
        return self._identity(self.environments.ensure(cross_spec(self.spec, host_arch)).digest)

    def prepare_environment(self) -> None:
        """Make the recipe's environment if the cache has none (a worker's task, minutes)."""
        if self.environments is not None and self.spec is not None:
            self.environments.ensure(self.spec)

    def step_environment(self, environment_id: str, host_arch: str = "") -> tuple[Path, bool]:
        """(tarball, whether it carries the mirror's apt lists) of the environment a step's input
        key names (``environment_id``; empty: the current one, the cross one for a foreign
        ``host_arch``)."""
        env = self._cached_environment(environment_id, host_arch)
        if env is None:
            if self.base_tarball is None:
                raise PermanentError(
                    f"the {self.name} runner has neither an environment cache nor a base tarball"
                )
            if host_arch and host_arch != self.native_architecture():
                self.cross_environment_id(host_arch)  # raises: no cross environment without the cache
            return self.base_tarball, False
        return env.path, env.spec.keep_lists

    def _cached_environment(self, environment_id: str, host_arch: str = "") -> Environment | None:
        if self.environments is None or self.spec is None:
            return None
        digest = environment_id.rsplit(":", 1)[-1]
        if digest:
            return self.environments.get(digest)
        if host_arch and host_arch != self.native_architecture():
            return self.environments.ensure(cross_spec(self.spec, host_arch))
        return self.environments.ensure(self.spec)

    def _step_tarball(self, job: StepJob, dsc: Path, scratch: Path | None) -> tuple[StepTarball, bool]:
        """(tarball, whether it carries the mirror's apt lists) of this step: its environment's
        dependency layer (held in use: released by the caller after the build) when it has big
        Build-Depends (:mod:`buildfarm.environments.steplayer`), else the environment."""
        env = self._cached_environment(job.environment_id, job.host_arch)
        if env is None or self.layers is None:
            path, has_lists = self.step_environment(job.environment_id, job.host_arch)
            return StepTarball(path), has_lists
        work = job.workdir / "layer"
        work.mkdir()
        chosen = step_tarball(
            env, dsc, job.extra_sources, self.layers, work=work, log=job.log, scratch=scratch
        )
        return chosen, env.spec.keep_lists

    @contextlib.contextmanager
    def attempt_chroots(self, job: StepJob) -> Iterator[Path | None]:
        """The attempt's own directory under the farm's chroot root (None without ``tmpdir``),
        removed afterwards with everything in it (``remove``: how, for trees of mapped users)."""
        if self.tmpdir is None:
            yield None
            return
        chroots = self.tmpdir / attempt_dirname(job.build_id, to_safe(job.step_name), job.attempt)
        make_dir(chroots)
        try:
            yield chroots
        finally:
            self.remove_tree(chroots)
            with contextlib.suppress(OSError):  # the farm's directory, if no other attempt uses it
                chroots.parent.rmdir()

    def remove_tree(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def run(self, job: StepJob) -> StepResult:
        raise NotImplementedError
