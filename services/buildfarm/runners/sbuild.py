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

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from buildfarm.environments import (
    BUILDER_PACKAGES,
    EnvironmentSpec,
    StepTarball,
    host_architecture,
    make_tarball,
)
from buildfarm.model.errors import PermanentError
from buildfarm.model.types import FILE_OUTPUT_SUFFIXES, PACKAGE_SUFFIXES, AptSource, RunnerKind
from buildfarm.runners.base import StepJob, StepResult
from buildfarm.runners.envrunner import EnvironmentRunner, farm_hosts, step_dsc, tarball_digest
from buildfarm.runners.process import describe_failure, run_streaming
from buildfarm.runners.unshare import check_namespaces

SBUILD_CONFIG = Path(__file__).parent / "sbuildrc"


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
        hosts = farm_hosts(extra_sources)
        env |= {"BUILDFARM_APT_PROXY": apt_proxy, "BUILDFARM_APT_DIRECT": " ".join(hosts)}
    return env


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


class SbuildRunner(EnvironmentRunner):
    """Runs each step with sbuild in the environment its build's input keys name
    (:class:`~buildfarm.runners.envrunner.EnvironmentRunner`: from the farm's environment cache,
    or ``base_tarball`` as is)."""

    name: str = RunnerKind.SBUILD
    _namespaces_checked: bool = False  # per runner object: a node's first step checks

    def run(self, job: StepJob) -> StepResult:
        for tool, package in (("sbuild", "sbuild"), ("dpkg-source", "dpkg-dev"), ("newuidmap", "uidmap")):
            if shutil.which(tool) is None:
                raise PermanentError(f"{tool} is not installed (Debian package: {package})")
        if not self._namespaces_checked:  # one line saying why and what to do, not sbuild's log
            check_namespaces(RunnerKind.SBUILD)
            self._namespaces_checked = True
        dsc = step_dsc(job)
        if isinstance(dsc, StepResult):
            return dsc
        out = job.workdir / "out"
        out.mkdir()
        cross = job.host_arch not in ("", self.native_architecture())
        home = job.workdir / "home"
        home.mkdir()
        env = sbuild_environment(home, self.apt_proxy, job.extra_sources)
        watch = _LogWatch(job.log, [s.url for s in job.extra_sources])
        chosen: StepTarball | None = None
        with self.attempt_chroots(job) as chroots:  # sbuild removes its chroot itself, unless killed
            if chroots is not None:
                env["BUILDFARM_SBUILD_TMPDIR"] = str(chroots)
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
            finally:
                if chosen is not None:
                    chosen.release()  # the layer may be evicted again
        layer = chosen.label if chosen is not None and chosen.result else None
        if outcome.returncode != 0 or outcome.cancelled or outcome.timed_out:
            failure = describe_failure("sbuild", outcome, job.timeout_seconds)
            return StepResult(False, [], watch.explain(failure), killed_by=outcome.killed_by, layer=layer)
        outputs = sorted(p for p in out.iterdir() if p.name.endswith(FILE_OUTPUT_SUFFIXES))
        if not any(p.name.endswith(PACKAGE_SUFFIXES) for p in outputs):
            return StepResult(False, [], "sbuild succeeded but produced no .deb", layer=layer)
        return StepResult(True, outputs, layer=layer)
