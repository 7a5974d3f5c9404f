"""The ``sbuild`` runner: every step in a fresh unshare chroot made from a cached base tarball.

This is how Debian's own builders work, and what a builder pod does on Kubernetes: the build
sees only the base system, the configured mirror and the extra repositories it is given (the
build's own staging repository first), so a Build-Depends on a package built earlier in the
same build is installed with apt exactly as in production, and a missing dependency fails.

The environment is a tarball from the farm's environment cache (:mod:`buildfarm.environments`:
the buildd variant with the Debian toolchain and the mirror's apt lists preinstalled), or a fixed
base tarball when the setting ``base_tarball`` names one; its sha256 is the environment's identity
in every input key, so a new tarball never reuses old outputs.  A step runs in the environment its
build's input keys name, found in the cache by that digest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
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
    make_tarball,
    step_tarball,
)
from buildfarm.model.errors import PermanentError
from buildfarm.model.names import to_safe
from buildfarm.model.types import FILE_OUTPUT_SUFFIXES, PACKAGE_SUFFIXES, AptSource, RunnerKind
from buildfarm.runners.base import EnvironmentNotReady, StepJob, StepResult, attempt_dirname
from buildfarm.runners.process import describe_failure, run_streaming
from buildfarm.runners.sourcepkg import unpack_step_source

SBUILD_CONFIG = Path(__file__).parent / "sbuildrc"
ENVIRONMENT_RETRY_SECONDS = 120.0
"""What a submit that found no environment is told to wait: mmdebstrap takes ~1-3 min."""
BUILDER_PACKAGES = ("python3", "ca-certificates")
"""Added to the base for the package-builder environment: the entrypoint is a python3 script
(python3-minimal lacks tarfile, gzip, json and http.client) and fetches over https."""


def _chroot_line(source: AptSource) -> str:
    """``source`` as the chroot's apt reads it: a host key path means nothing inside the chroot,
    so a signed source is checked against the trusted keys sbuild adds (--extra-repository-key)."""
    if source.signed_by is None:
        return source.line()
    return replace(source, signed_by=None, trusted=False).line()


def sbuild_command(
    base_tarball: Path,
    distribution: str,
    build_dir: Path,
    dsc: Path,
    extra_sources: Sequence[AptSource] = (),
    *,
    apt_update: bool = True,
    host_arch: str | None = None,
    arch_all: bool = True,
    install_deps: bool = True,
) -> list[str]:
    """The sbuild call of every step (``make bench`` builds by hand with it: only the farm differs).

    ``apt_update=False`` when the environment carries the mirror's apt lists: sbuild then
    refreshes only its own archive and the extra repositories.  ``host_arch`` cross-builds
    (``--host``: Build-Depends are installed for that architecture, the compiler is Debian's
    cross toolchain); ``arch_all=False`` leaves the ``Architecture: all`` binaries to the step
    of the source's primary architecture.

    ``install_deps=False`` when the tarball already has every Build-Depends
    (:attr:`StepTarball.satisfied`): sbuild's ``null`` resolver, so no dummy package, no apt
    run, no extra repository in the chroot (``make bench``: a third of a trivial step's setup);
    dpkg-buildpackage still runs dpkg-checkbuilddeps in the chroot, so a dependency missing after
    all fails the build with "Unmet build dependencies"."""
    if not install_deps:
        apt_update, extra_sources = False, ()
    return [
        "sbuild",
        "--chroot-mode=unshare",
        f"--chroot={base_tarball}",
        f"--dist={distribution}",
        "--no-run-lintian",
        "--no-run-piuparts",
        "--no-run-autopkgtest",
        "--no-apt-upgrade",
        "--no-apt-distupgrade",
        *([] if apt_update else ["--no-apt-update"]),
        *([] if install_deps else ["--build-dep-resolver=null"]),
        "--nolog",
        f"--build-dir={build_dir}",
        *([f"--host={host_arch}"] if host_arch else []),
        "--arch-all" if arch_all else "--no-arch-all",
        "--arch-any",
        *(f"--extra-repository={_chroot_line(s)}" for s in extra_sources),
        # a signed source's key goes into the chroot's trusted keys (sbuild copies it there)
        *(f"--extra-repository-key={s.signed_by}" for s in extra_sources if s.signed_by),
        str(dsc),
    ]


def sbuild_environment(
    home: Path, apt_proxy: str | None = None, extra_sources: Sequence[AptSource] = ()
) -> dict[str, str]:
    """sbuild's environment: this file's configuration, no DEB_*/DPKG_* of the caller, and a
    ``home`` without .sbuildrc (sbuild reads $HOME/.sbuildrc before SBUILD_CONFIG).  With
    ``apt_proxy`` (the farm's package cache) apt in the chroot fetches through it, except from the
    hosts of ``extra_sources`` (the farm's own repositories)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEB_", "DPKG_", "BUILDFARM_APT_"))}
    env |= {"SBUILD_CONFIG": str(SBUILD_CONFIG), "LC_ALL": "C.UTF-8", "HOME": str(home)}
    if apt_proxy:
        hosts = sorted({urlsplit(s.url).hostname or "" for s in extra_sources} - {""})
        env |= {"BUILDFARM_APT_PROXY": apt_proxy, "BUILDFARM_APT_DIRECT": " ".join(hosts)}
    return env


def tarball_digest(path: Path) -> str:
    """sha256 of the tarball, cached beside it (keyed by size and mtime: hashing 445 MB takes ~1 s)."""
    return file_digest(path)


def ensure_base_tarball(
    path: Path,
    distribution: str,
    mirror: str,
    progress: Callable[[str], None] | None = None,
    include: tuple[str, ...] = (),
    *,
    proxy: str | None = None,
) -> Path:
    """Make a fixed base tarball at ``path`` with mmdebstrap if it does not exist yet (atomically:
    a temporary name, then a rename).  The farm's own builds use the environment cache instead;
    this is the base of the builder image and of a ``base_tarball`` named in the settings.

    ``include`` adds packages to the ``buildd`` variant (the builder tarball adds python3).
    """
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    spec = EnvironmentSpec(distribution, host_architecture(), mirror, include, keep_lists=False)
    try:
        make_tarball(spec, tmp, proxy, progress)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    tarball_digest(path)
    if progress:
        progress(f"build environment ready ({path.stat().st_size // (1 << 20)} MiB)")
    return path


def builder_tarball_path(base_tarball: Path, distribution: str) -> Path:
    """The builder environment is cached next to the base tarball as ``<distribution>-builder.tar``."""
    return base_tarball.with_name(f"{distribution}-builder.tar")


def ensure_builder_tarball(
    base_tarball: Path, distribution: str, mirror: str, progress: Callable[[str], None] | None = None
) -> Path:
    """The package-builder environment: the sbuild base plus what ``buildfarm-step`` needs.

    The same tarball is the package-builder image (``FROM scratch`` + ``ADD``) and the chroot the
    entrypoint's tests run in, so what is tested is what runs in a builder pod.
    """
    path = builder_tarball_path(base_tarball, distribution)
    return ensure_base_tarball(path, distribution, mirror, progress, include=BUILDER_PACKAGES)


class _LogWatch:
    """Passes log lines on, remembering what explains a failure: sbuild's ``E:`` line, whether
    one of the farm's own repositories could not be fetched (apt only warns about that), and
    dpkg-checkbuilddeps' error in the chroot (a step run without a resolver whose Build-Depends
    are not all there after all: sbuild's own line then only says dpkg-buildpackage died)."""

    def __init__(self, sink: Callable[[str], None], farm_urls: list[str]) -> None:
        self.sink = sink
        self.farm_urls = [u.rstrip("/") for u in farm_urls]
        self.last_error: str | None = None
        self.unreachable: str | None = None
        self.unmet: str | None = None

    def __call__(self, line: str) -> None:
        self.sink(line)
        if line.startswith("E: "):
            self.last_error = line[3:].strip()
        elif line.startswith("dpkg-checkbuilddeps: error: "):
            self.unmet = line.removeprefix("dpkg-checkbuilddeps: error: ").strip()
        elif line.startswith("W: Failed to fetch") and any(u in line for u in self.farm_urls):
            self.unreachable = next(u for u in self.farm_urls if u in line)

    def explain(self, base: str) -> str:
        if self.unreachable:
            return f"{base}: the farm's repository {self.unreachable} was unreachable from the build"
        if self.unmet:
            return f"{base}: {self.unmet}"
        return f"{base}: {self.last_error}" if self.last_error else base


def _make_dir(path: Path, tries: int = 3) -> None:
    """``mkdir -p`` that survives another attempt removing the (empty) parent at the same moment."""
    for _ in range(tries - 1):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            continue
    path.mkdir(parents=True, exist_ok=True)


class SbuildRunner:
    """Runs each step with sbuild in the environment its build's input keys name.

    With ``environments`` (and its recipe ``spec``) the environment comes from the farm's cache:
    made on first use, found by digest for each step.  Without, ``base_tarball`` is used as is.
    """

    name: str = RunnerKind.SBUILD

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
        return f"sbuild:{self.distribution}:{digest}"

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
                f"the sbuild base tarball {self.base_tarball} does not exist: `buildfarm start` makes it"
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
                raise PermanentError("the sbuild runner has neither an environment cache nor a base tarball")
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
        dependency layer (held in use: released by the caller after sbuild) when it has big
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

    def run(self, job: StepJob) -> StepResult:
        for tool, package in (("sbuild", "sbuild"), ("dpkg-source", "dpkg-dev"), ("newuidmap", "uidmap")):
            if shutil.which(tool) is None:
                raise PermanentError(f"{tool} is not installed (Debian package: {package})")
        source = job.workdir / "src"
        dsc = unpack_step_source(job.source_tarball, source)
        if dsc is None:  # a bare tree (a step recorded before source packages): make its .dsc
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
            dsc = dscs[0]
        out = job.workdir / "out"
        out.mkdir()
        cross = job.host_arch not in ("", self.native_architecture())
        home = job.workdir / "home"
        home.mkdir()
        env = sbuild_environment(home, self.apt_proxy, job.extra_sources)
        chroots: Path | None = None
        if self.tmpdir is not None:
            chroots = self.tmpdir / attempt_dirname(job.build_id, to_safe(job.step_name), job.attempt)
            _make_dir(chroots)
            env["BUILDFARM_SBUILD_TMPDIR"] = str(chroots)
        watch = _LogWatch(job.log, [s.url for s in job.extra_sources])
        chosen: StepTarball | None = None
        try:
            chosen, has_lists = self._step_tarball(job, dsc, chroots)
            command = sbuild_command(
                chosen.path,
                self.distribution,
                out,
                dsc,
                job.extra_sources,
                apt_update=not has_lists,
                host_arch=job.host_arch if cross else None,
                arch_all=job.arch_all,
                install_deps=not chosen.satisfied,
            )
            outcome = run_streaming(
                command,
                cwd=job.workdir,
                log=watch,
                cancel=job.cancel,
                timeout_seconds=job.timeout_seconds,
                env=env,
            )
        finally:  # sbuild removes its chroot itself, unless it was killed
            if chosen is not None:
                chosen.release()  # the layer may be evicted again
            if chroots is not None:
                shutil.rmtree(chroots, ignore_errors=True)
                with contextlib.suppress(OSError):  # the farm's directory, if no other attempt uses it
                    chroots.parent.rmdir()
        layer = chosen.label if chosen is not None and chosen.result else None
        if outcome.returncode != 0 or outcome.cancelled or outcome.timed_out:
            failure = describe_failure("sbuild", outcome, job.timeout_seconds)
            return StepResult(False, [], watch.explain(failure), killed_by=outcome.killed_by, layer=layer)
        outputs = sorted(p for p in out.iterdir() if p.name.endswith(FILE_OUTPUT_SUFFIXES))
        if not any(p.name.endswith(PACKAGE_SUFFIXES) for p in outputs):
            return StepResult(False, [], "sbuild succeeded but produced no .deb", layer=layer)
        return StepResult(True, outputs, layer=layer)
