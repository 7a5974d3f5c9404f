"""The package-builder image made from a build environment (issue 15 part 5).

A builder pod on Kubernetes starts with the toolchain in place because its image *is* the farm's
environment: the tarball of :mod:`buildfarm.environments` (the buildd variant, the Debian build
toolchain, the mirror's apt lists; recipe plus :data:`~buildfarm.environments.BUILDER_PACKAGES`
for the entrypoint) unpacked as the image's one filesystem layer (``buildah from scratch`` +
``buildah add`` of the tarball, as the Dockerfile under buildtools/images/package-builder does
with ``ADD``), plus ``buildfarm-step`` as its entrypoint.  It is pushed to the farm's registry as
``<registry>/buildfarm/package-builder:env-<environment digest>-<entrypoint digest>`` and then
as the moving tag the setting ``builder_image`` names (``current`` by default here).

**How the image digest follows the environment.** The tag records which environment and which
entrypoint an image was made of; an environment already made into an image is never built again
(its tag is found in the registry), so an unchanged environment keeps its image digest and its
steps keep their input keys.  A refreshed environment (new packages, security updates) has a new
digest, so a new tag, a new layer and a new image digest; its label
``io.buildfarm.environment`` says which environment.  The Kubernetes runner resolves the moving
tag to that digest when a build is submitted and puts ``kubernetes:<image>@sha256:...`` in every
input key, so the image digest *is* the environment identity of a Kubernetes build, as the
tarball's digest is of an sbuild build, and each step's Job names the image its key names.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from buildfarm.backends.registry import RegistryClient
from buildfarm.environments import Environment
from buildfarm.model.errors import PermanentError
from buildfarm.model.images import registry_host, registry_insecure
from buildfarm.runners.buildah import _quiet, storage_options

BUILDER_REPOSITORY = "buildfarm/package-builder"
CURRENT_TAG = "current"
ENTRYPOINT_PATH = "/usr/local/bin/buildfarm-step"
ENVIRONMENT_LABEL = "io.buildfarm.environment"
IMAGE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL=C.UTF-8",
    "DEBIAN_FRONTEND=noninteractive",
)
"""What buildtools/images/package-builder/Dockerfile sets too."""


@dataclass(frozen=True)
class BuilderImage:
    """One package-builder image in the farm's registry."""

    reference: str  # <host>/<repository>@sha256:...
    digest: str  # sha256:...
    environment: str  # the environment's digest (hex)
    built: bool  # False: the environment's image was in the registry already


def image_tag(environment_digest: str, entrypoint: Path) -> str:
    """``env-<16 hex of the environment>-<12 hex of the entrypoint>``: one image per pair."""
    entry = hashlib.sha256(entrypoint.read_bytes()).hexdigest()
    return f"env-{environment_digest[:16]}-{entry[:12]}"


def ensure_builder_image(
    env: Environment,
    entrypoint: Path,
    registry_url: str,
    storage: Path,
    *,
    repository: str = BUILDER_REPOSITORY,
    move_tag: str | None = CURRENT_TAG,
    auth: tuple[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BuilderImage:
    """The package-builder image of ``env`` in the registry (built and pushed if it is not
    there yet); ``move_tag`` (the tag ``builder_image`` names) then points at it.  ``storage``:
    buildah's private storage (a scratch container, removed after the commit)."""
    if shutil.which("buildah") is None:
        raise PermanentError("buildah is not installed (Debian package: buildah)")
    if not entrypoint.is_file():
        raise PermanentError(f"the builder entrypoint {entrypoint} does not exist")
    host = registry_host(registry_url)
    client = RegistryClient(registry_url, auth=auth)
    tag = image_tag(env.digest, entrypoint)
    built = not client.has_manifest(repository, tag)
    if built:
        _build_and_push(
            env,
            entrypoint,
            f"{host}/{repository}:{tag}",
            registry_url=registry_url,
            storage=storage,
            progress=progress,
        )
    _body, digest, _type = client.manifest(repository, tag)
    if move_tag is not None:
        client.copy_image(repository, digest, repository, move_tag)
    reference = f"{host}/{repository}@{digest}"
    if progress:
        progress(f"package-builder image {reference} ({'built' if built else 'unchanged'}) of {env.short}")
    return BuilderImage(reference, digest, env.digest, built)


def _build_and_push(
    env: Environment,
    entrypoint: Path,
    destination: str,
    *,
    registry_url: str,
    storage: Path,
    progress: Callable[[str], None] | None,
) -> None:
    if progress:
        progress(f"making {destination} from the environment {env.short} ({env.size >> 20} MiB)")
    buildah = ["buildah", *storage_options(storage)]
    container = _quiet([*buildah, "from", "--quiet", "scratch"], "buildah from scratch")
    try:
        _quiet([*buildah, "add", "--quiet", container, str(env.path), "/"], f"buildah add {env.path}")
        _quiet(
            [*buildah, "copy", "--quiet", "--chmod", "0755", container, str(entrypoint), ENTRYPOINT_PATH],
            "buildah copy of the entrypoint",
        )
        _quiet(
            [
                *buildah,
                "config",
                *(arg for pair in IMAGE_ENV for arg in ("--env", pair)),
                "--workingdir",
                "/build",
                "--entrypoint",
                f'["{ENTRYPOINT_PATH}"]',
                "--cmd",
                "--help",
                "--label",
                f"{ENVIRONMENT_LABEL}={env.digest}",
                container,
            ],
            "buildah config",
        )
        _quiet([*buildah, "commit", "--quiet", "--format", "oci", container, destination], "buildah commit")
    finally:
        _quiet([*buildah, "rm", container], "buildah rm")
    tls = "--tls-verify=false" if registry_insecure(registry_url) else "--tls-verify=true"
    try:
        _quiet(
            [*buildah, "push", "--quiet", tls, destination, f"docker://{destination}"],
            f"pushing {destination}",
        )
    finally:
        _quiet([*buildah, "rmi", destination], "buildah rmi")
