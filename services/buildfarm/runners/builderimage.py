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

**Kept fresh.** :func:`make_builder_images` is what ``buildfarm env image`` and the scheduler's
nightly ``env_refresh`` on a Kubernetes farm both run: the environment (and each cross
environment whose image the registry holds) made afresh from the mirror, made into images,
the tags moved.  It runs only where mmdebstrap and buildah do (:func:`image_maker_missing`):
builder and worker pods cannot make an environment (the README says why), so a nightly run that
lands on such a node records why it did not, and the image's age, as a failed run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildfarm.backends.base import PackageCache
from buildfarm.backends.registry import RegistryClient
from buildfarm.environments import BUILDER_PACKAGES, Environment, cross_spec, routed_environments
from buildfarm.model.errors import PermanentError
from buildfarm.model.images import registry_host, registry_insecure, split_reference
from buildfarm.model.settings import Settings
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
ENTRYPOINT = Path(__file__).resolve().parents[3] / "buildtools" / "builder" / "buildfarm-step"
"""The builder entrypoint of a source checkout (the farm image does not carry it)."""
CROSS_TAG = "-cross-"


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


def builder_image_tag(settings: Settings) -> tuple[str, str]:
    """(repository, tag) on the farm's registry that ``builder_image`` names, which
    :func:`make_builder_images` moves; a clear error when it names no tag there."""
    if not settings.registry.url:
        raise PermanentError("no container registry: set registry_url (BUILDFARM_REGISTRY_URL)")
    host, repository, tag = split_reference(settings.builders.image)
    if host != registry_host(settings.registry.url) or tag.startswith("sha256:"):
        raise PermanentError(
            f"builder_image {settings.builders.image!r} is not a tag on the farm's registry "
            f"{registry_host(settings.registry.url)}: set it to <registry>/buildfarm/package-builder:current"
        )
    return repository, tag


def makes_builder_image(settings: Settings) -> bool:
    """Whether this farm's builder pods run an image the farm makes (a Kubernetes farm whose
    ``builder_image`` is a tag on its registry, the chart's default): its refresh makes it."""
    if settings.builders.runner != "kubernetes" or not settings.registry.url:
        return False
    try:
        builder_image_tag(settings)
    except PermanentError:
        return False
    return True


def image_maker_missing(entrypoint: Path = ENTRYPOINT) -> str | None:
    """Why this machine cannot make package-builder images (None: it can)."""
    missing = [tool for tool in ("mmdebstrap", "buildah") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed here"
    if not entrypoint.is_file():
        return f"the builder entrypoint {entrypoint} is not here (a source checkout has it)"
    return None


def cross_architectures(settings: Settings) -> list[str]:
    """The architectures whose cross image (``<tag>-cross-<arch>``) the farm's registry holds."""
    repository, tag = builder_image_tag(settings)
    client = RegistryClient(settings.registry.url or "", auth=settings.registry.auth())
    prefix = f"{tag}{CROSS_TAG}"
    return sorted(t.removeprefix(prefix) for t in client.tags(repository) if t.startswith(prefix))


@dataclass(frozen=True)
class MadeImage:
    """One package-builder image :func:`make_builder_images` made or found, and its moved tag."""

    tag: str  # <host>/<repository>:<tag> as builder pods' settings name it
    image: BuilderImage
    environment: Environment

    def describe(self) -> str:
        what = "new" if self.image.built else "unchanged"
        return f"{self.tag} -> {self.image.reference} ({what}, environment {self.environment.short})"


def make_builder_images(
    settings: Settings,
    packages: PackageCache,
    *,
    refresh: bool,
    cross: Sequence[str | None] = (None,),
    entrypoint: Path = ENTRYPOINT,
    progress: Callable[[str], None] | None = None,
) -> list[MadeImage]:
    """The package-builder image of the farm's environment (``None`` in ``cross``) and of the
    cross environment of each architecture in ``cross``, made from the mirror as ``packages``
    routes it (``refresh``: afresh, for security updates), pushed and tagged; an environment
    already made into an image is not built again, so an unchanged mirror moves no tag."""
    repository, tag = builder_image_tag(settings)
    host = registry_host(settings.registry.url)
    include = (*settings.buildenv.packages, *BUILDER_PACKAGES)
    cache, native = routed_environments(settings, packages, refresh=refresh, include=include)
    made = []
    for arch in cross:
        spec, move = (native, tag) if arch is None else (cross_spec(native, arch), f"{tag}{CROSS_TAG}{arch}")
        env = cache.refresh(spec, progress) if refresh else cache.ensure(spec, progress)
        image = ensure_builder_image(
            env,
            entrypoint,
            settings.registry.url or "",
            settings.buildenv.cache_dir / "buildah",
            repository=repository,
            move_tag=move,
            auth=settings.registry.auth(),
            progress=progress,
        )
        made.append(MadeImage(f"{host}/{repository}:{move}", image, env))
    return made


@dataclass(frozen=True)
class CurrentImage:
    """What the image ``builder_image`` names was made of, read from its config in the registry."""

    reference: str  # builder_image, the moving tag
    created: str  # the image config's creation time (buildah commit's)
    environment: str  # the environment's digest (its label), "" if it has none


def current_image(settings: Settings) -> CurrentImage | None:
    """The image ``builder_image`` names on the farm's registry (None: not made yet)."""
    repository, tag = builder_image_tag(settings)
    client = RegistryClient(settings.registry.url or "", auth=settings.registry.auth())
    if not client.has_manifest(repository, tag):
        return None
    manifest, _digest, _type = client.manifest(repository, tag)
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.json"
        client.fetch_blob(repository, manifest["config"]["digest"], config_path)
        config = json.loads(config_path.read_text())
    labels = (config.get("config") or {}).get("Labels") or {}
    return CurrentImage(
        settings.builders.image, str(config.get("created", "")), str(labels.get(ENVIRONMENT_LABEL, ""))
    )


def current_image_made(settings: Settings) -> str:
    """When and from which environment the image ``builder_image`` names was made, for a message
    saying how stale it is."""
    return _made(settings, current_image(settings))


def _made(settings: Settings, image: CurrentImage | None) -> str:
    if image is None:
        return f"{settings.builders.image} does not exist yet"
    return (
        f"{image.reference} was made {image.created or '(date unknown)'} from environment "
        f"{image.environment[:12] or '(unknown)'}"
    )


def image_staleness(settings: Settings, environments: Sequence[Environment]) -> str:
    """One line on the package-builder image beside this machine's ``environments``: stale when
    the environment it was made of is here but no longer current (a refresh replaced it)."""
    image = current_image(settings)
    made = _made(settings, image)
    if image is None:
        return f"{made}: run `buildfarm env image`"
    of = next((e for e in environments if e.digest == image.environment), None)
    if of is None:
        return f"{made} (not in this machine's cache)"
    if not of.current:
        return f"stale: {made}, which a refresh replaced: run `buildfarm env image --refresh`"
    return made
