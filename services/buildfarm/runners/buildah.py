"""The local image runner: ``buildah bud`` on this node, then a push to the farm's registry.

buildah needs no daemon and, with ``--isolation chroot``, no user namespaces set up by hand:
it is the local profile's stand-in for kaniko pods (and for sysbox pods: a Dockerfile that runs
a docker daemon of its own cannot work here). Its storage is private to the farm
(``--root``/``--runroot`` under the given directory), never the machine's ``/var/lib/containers``.

Storage driver: ``overlay`` where the kernel lets this process mount it (root, checked once
with a real test mount), else ``vfs``, which works everywhere but copies the whole root
filesystem for every container and layer: measured here, starting a build FROM the Debian
base takes ~10 s on vfs and ~0.1 s on overlay, and a commit ~2.6 s against ~0.2 s.  Each
driver has its own storage directory (they cannot share one).

Build args set by the farm (a manifest cannot override them):

* ``BUILDFARM_APT_SOURCE``: the build's staging repository as one sources line (empty when the
  step depends on no package), so a Dockerfile can install what the same build just made;
* ``BUILDFARM_IMAGE_PREFIX``: ``<registry>/<project>/<branch>/<build id>``, for
  ``FROM ${BUILDFARM_IMAGE_PREFIX}/<earlier image>``;
* ``BUILDFARM_REGISTRY``: ``host:port`` of the farm's registry, for the seeded base image
  ``FROM ${BUILDFARM_REGISTRY}/debian:<distribution>``.

**Environment identity** (part of every image step's input key): the buildah version, the
storage driver and isolation, and the sha256 of the base tarball the registry's
``debian:<distribution>`` was seeded from.  Other ``FROM`` images are not pinned by the farm:
the key covers the Dockerfile's text, so a Dockerfile that wants a new upstream base to rebuild
it names that base by digest (``FROM image@sha256:...``).  RUN steps reach the network of the
node (chroot isolation shares it), so the staging repository on 127.0.0.1 is reachable.

The built image, and images of the same build pulled for ``FROM``, are removed from the local
storage after the push; base images stay, so the next build does not pull them again.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from buildfarm.backends.registry import RegistryClient
from buildfarm.model.errors import PermanentError
from buildfarm.model.images import registry_host, registry_insecure, split_reference
from buildfarm.model.sources import unpack_tree
from buildfarm.model.types import ImageBuilder, RunnerKind, StepKind
from buildfarm.runners.base import BuiltImage, StepJob, StepResult
from buildfarm.runners.process import describe_failure, run_streaming

BUILDAH_QUICK_TIMEOUT_SECONDS = 120
"""Bound on buildah's bookkeeping commands (version, rmi, images): seconds, even on vfs."""
PUSH_TIMEOUT_SECONDS = 1800
"""A push of a large image over a slow link; the local registry takes seconds."""
SEED_TIMEOUT_SECONDS = 900
"""Importing the ~445 MB base tarball takes ~55 s here (add, commit, gzip); far more on slow disks."""
BASE_IMAGE_REPOSITORY = "debian"


@functools.cache
def buildah_version() -> str:
    if shutil.which("buildah") is None:
        raise PermanentError("buildah is not installed (Debian package: buildah)")
    out = subprocess.run(
        ["buildah", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=BUILDAH_QUICK_TIMEOUT_SECONDS,
    ).stdout
    parts = out.split()
    return parts[2] if len(parts) > 2 else out.strip()


@functools.cache
def storage_driver(probe_dir: Path) -> str:
    """``overlay`` if a test overlay mount works here (as root, on a kernel that has it), else ``vfs``."""
    try:
        if os.geteuid() != 0 or "overlay" not in Path("/proc/filesystems").read_text():
            return "vfs"
    except OSError:
        return "vfs"
    probe = probe_dir / f".overlay-probe-{os.getpid()}"
    try:
        for part in ("lower", "upper", "work", "merged"):
            (probe / part).mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={probe / 'lower'},upperdir={probe / 'upper'},workdir={probe / 'work'}"
        mounted = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(probe / "merged")],
            capture_output=True,
            check=False,
            timeout=BUILDAH_QUICK_TIMEOUT_SECONDS,
        )
        if mounted.returncode != 0:
            return "vfs"
        subprocess.run(["umount", str(probe / "merged")], capture_output=True, check=False, timeout=60)
        return "overlay"
    except (OSError, subprocess.SubprocessError):
        return "vfs"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def storage_options(storage: Path) -> list[str]:
    """buildah's global options for the farm's private storage under ``storage``."""
    storage.mkdir(parents=True, exist_ok=True)
    driver = storage_driver(storage)
    root = storage / driver
    return ["--root", str(root / "root"), "--runroot", str(root / "runroot"), "--storage-driver", driver]


class _FailureWatch:
    """Passes log lines on and keeps buildah's last error line (``error building at STEP ...``)."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        self.sink = sink
        self.last_error: str | None = None

    def __call__(self, line: str) -> None:
        self.sink(line)
        lowered = line.lower()
        if lowered.startswith(("error", "error:")) or " error building at step" in lowered:
            self.last_error = line.strip().removeprefix("Error: ").removeprefix("error: ")


class LocalImageRunner:
    """Image steps with buildah on this node (the local profile's image builder)."""

    name: str = RunnerKind.BUILDAH

    def __init__(
        self,
        storage: Path,
        registry_url: str | None,
        base_tarball: Path | None = None,
        distribution: str = "bookworm",
        cache_dir: Path | None = None,
    ) -> None:
        self.storage = storage
        self.registry_url = registry_url
        self.base_tarball = base_tarball
        self.distribution = distribution
        self.cache_dir = cache_dir or storage

    @property
    def base_identity(self) -> str:
        """sha256 of the base tarball the registry's debian image is (or will be) seeded from."""
        if self.base_tarball is None or not self.base_tarball.is_file():
            return ""
        from buildfarm.runners.envrunner import tarball_digest

        return tarball_digest(self.base_tarball)

    def environment_id(self) -> str:
        base = self.base_identity[:16] if self.base_identity else "none"
        return f"buildah:{buildah_version()}:chroot:base={base}"

    def _buildah(self) -> list[str]:
        return ["buildah", *storage_options(self.storage)]

    def run(self, job: StepJob) -> StepResult:
        spec = job.image
        if spec is None or job.kind != StepKind.IMAGE:
            raise PermanentError(f"step {job.step_name}: the image runner got a step that is not an image")
        buildah_version()
        registry = registry_host(self.registry_url)
        tls = "--tls-verify=false" if registry_insecure(self.registry_url or "") else "--tls-verify=true"
        context = job.workdir / "context"
        unpack_tree(job.source_tarball, context)
        dockerfile = (context / spec.dockerfile).resolve()
        if not dockerfile.is_relative_to(context.resolve()) or not dockerfile.is_file():
            return StepResult(False, [], f"no Dockerfile {spec.dockerfile!r} in the image context")
        prefix = spec.destination.rsplit("/", 1)[0]
        farm_args = {
            "BUILDFARM_APT_SOURCE": job.extra_sources[0].line() if job.extra_sources else "",
            "BUILDFARM_IMAGE_PREFIX": prefix,
            "BUILDFARM_REGISTRY": registry,
        }
        build_args = [*spec.build_args, *farm_args.items()]
        if spec.builder == ImageBuilder.SYSBOX:
            job.log("buildfarm: builder sysbox runs as buildah here: no docker daemon inside RUN")
        self.storage.mkdir(parents=True, exist_ok=True)
        if self.base_tarball is not None and self.base_tarball.is_file():
            seed_registry(
                self.registry_url or registry,
                base_layout(self.base_tarball, self.cache_dir, self.distribution, job.log),
                self.distribution,
                job.log,
            )
        command = [
            *self._buildah(),
            "bud",
            "--isolation",
            "chroot",
            "--format",
            "docker",
            tls,
            "--file",
            str(dockerfile),
            "--tag",
            spec.destination,
            "--label",
            f"io.buildfarm.build={job.build_id}",
            "--label",
            f"io.buildfarm.step={job.step_name}",
            *(f"--build-arg={name}={value}" for name, value in build_args),
            str(context),
        ]
        watch = _FailureWatch(job.log)
        job.log(f"buildfarm: building image {spec.destination} with buildah {buildah_version()}")
        outcome = run_streaming(
            command, cwd=job.workdir, log=watch, cancel=job.cancel, timeout_seconds=job.timeout_seconds
        )
        try:
            if outcome.returncode != 0 or outcome.cancelled or outcome.timed_out:
                failure = describe_failure("buildah bud", outcome, job.timeout_seconds)
                explained = (
                    f"{failure}: {watch.last_error}" if watch.last_error and outcome.returncode else failure
                )
                return StepResult(False, [], explained)
            digest_file = job.workdir / "digest"
            outcome = run_streaming(
                [
                    *self._buildah(),
                    "push",
                    tls,
                    "--digestfile",
                    str(digest_file),
                    spec.destination,
                    f"docker://{spec.destination}",
                ],
                cwd=job.workdir,
                log=watch,
                cancel=job.cancel,
                timeout_seconds=min(job.timeout_seconds, PUSH_TIMEOUT_SECONDS),
            )
            if outcome.returncode != 0 or outcome.cancelled or outcome.timed_out:
                failure = describe_failure("buildah push", outcome, job.timeout_seconds)
                return StepResult(
                    False, [], f"{failure}: {watch.last_error}" if watch.last_error else failure
                )
            digest = digest_file.read_text().strip()
        finally:
            self._remove_local(prefix)
        _host, repository, _tag = split_reference(spec.destination)
        size = RegistryClient(self.registry_url or registry).image_size(repository, digest)
        job.log(f"buildfarm: pushed {spec.destination}@{digest} ({size} bytes)")
        return StepResult(True, [], images=[BuiltImage(spec.destination, digest, size)])

    def _remove_local(self, prefix: str) -> None:
        """Drop the images of this build's namespace (built or pulled for FROM) from the local
        storage; one that another running step still uses is left (no --force)."""
        listed = subprocess.run(
            [*self._buildah(), "images", "--format", "{{.Name}}:{{.Tag}}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=BUILDAH_QUICK_TIMEOUT_SECONDS,
        )
        mine = [name for name in listed.stdout.split() if name.startswith(prefix + "/")]
        if mine:
            subprocess.run(
                [*self._buildah(), "rmi", *mine],
                capture_output=True,
                check=False,
                timeout=BUILDAH_QUICK_TIMEOUT_SECONDS,
            )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """One process at a time (nodes of a farm share the cache dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _quiet(command: list[str], what: str, timeout: float = SEED_TIMEOUT_SECONDS) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise PermanentError(f"{command[0]} is not installed (Debian package: {command[0]})") from exc
    except subprocess.CalledProcessError as exc:
        tail = " ".join((exc.stderr or "").strip().splitlines()[-2:])
        raise PermanentError(f"{what} failed: {tail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise PermanentError(f"{what} took over {timeout:.0f} s") from exc
    return done.stdout.strip()


def base_layout(
    tarball: Path, cache_dir: Path, distribution: str, progress: Callable[[str], None] | None = None
) -> Path:
    """The Debian base image as an OCI layout in the cache, made once per base tarball:
    ``buildah from scratch`` + ``add`` of the mmdebstrap tarball + commit, pushed to
    ``oci:<dir>`` with gzip layers (so seeding a registry later copies bytes, not CPU)."""
    from buildfarm.runners.envrunner import tarball_digest

    layout = cache_dir / f"{distribution}-base-oci-{tarball_digest(tarball)[:16]}"
    if (layout / "index.json").is_file():
        return layout
    with _file_lock(cache_dir / f".{layout.name}.lock"):
        if (layout / "index.json").is_file():
            return layout
        if progress:
            progress(f"buildfarm: making the base image {distribution} from {tarball} (once, ~1 min)")
        scratch = cache_dir / f".{layout.name}.{os.getpid()}.tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        buildah = ["buildah", *storage_options(scratch / "storage")]
        try:
            container = _quiet([*buildah, "from", "scratch"], "buildah from scratch")
            _quiet([*buildah, "add", container, str(tarball), "/"], f"buildah add {tarball}")
            _quiet(
                [
                    *buildah,
                    "config",
                    "--cmd",
                    "/bin/bash",
                    "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--label",
                    f"io.buildfarm.base-tarball={tarball_digest(tarball)}",
                    container,
                ],
                "buildah config",
            )
            image = f"localhost/buildfarm-base:{distribution}"
            _quiet([*buildah, "commit", "--quiet", "--rm", container, image], "buildah commit")
            _quiet(
                [
                    *buildah,
                    "push",
                    "--compression-format",
                    "gzip",
                    image,
                    f"oci:{scratch / 'oci'}:{distribution}",
                ],
                "buildah push to an OCI layout",
            )
            os.replace(scratch / "oci", layout)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return layout


def seed_registry(
    registry_url: str, layout: Path, distribution: str, progress: Callable[[str], None] | None = None
) -> str:
    """Push the base image as ``<registry>/debian:<distribution>`` unless it is there already
    (once per registry). Returns the reference."""
    host = registry_host(registry_url)
    reference = f"{host}/{BASE_IMAGE_REPOSITORY}:{distribution}"
    client = RegistryClient(registry_url)
    if client.has_manifest(BASE_IMAGE_REPOSITORY, distribution):
        return reference
    if progress:
        progress(f"buildfarm: seeding {reference} from {layout}")
    tls = "false" if registry_insecure(registry_url) else "true"
    _quiet(
        [
            "skopeo",
            "copy",
            "--quiet",
            f"--dest-tls-verify={tls}",
            f"oci:{layout}:{distribution}",
            f"docker://{reference}",
        ],
        f"seeding {reference}",
    )
    return reference
