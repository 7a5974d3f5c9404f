"""Every image the chart's end-to-end run starts, built here with buildah, never pulled.

There is no public registry on these machines, so the Debian base comes from the farm's own
mmdebstrap tarball (the sbuild base, made once and cached: ``buildfarm.runners.buildah.base_layout``)
and every other image is built FROM it through a ``BASE_IMAGE`` build argument:

* the farm's own images from ``buildtools/images`` exactly as production builds them (farm, pulp,
  package-builder), the first two on a stand-in for ``python:3.11-slim-bookworm``;
* stand-ins for the third-party images the chart deploys (PostgreSQL, Redis, registry from
  Debian's packages; MinIO and ``mc`` as moto's S3 server; the kaniko executor as the API test
  double's image builder), from ``ops/e2e/images``, used only by this test.

The storage (``<cache>/e2e/storage``) is private to the e2e run, shared with podman, survives
between runs and is never committed. An image is rebuilt only when the hash of its Dockerfile,
context files and base image changes (tag ``h-<hash>``); ``:e2e`` names the current one.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from buildfarm.model.settings import load_settings
from buildfarm.runners.buildah import base_layout, storage_driver
from buildfarm.runners.envrunner import tarball_digest
from buildfarm.runners.sbuild import ensure_base_tarball, ensure_builder_tarball

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TAG = "e2e"
E2E_PREFIX = "localhost/buildfarm-e2e"
FARM_PREFIX = "localhost/buildfarm"
BUILD_TIMEOUT_SECONDS = 1800
"""One image build (pip installs Pulp's ~100 wheels on a loaded 2-core machine): a bound, not a goal."""
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def cache_root() -> Path:
    return load_settings().buildenv.cache_dir / "e2e"


def storage_options() -> list[str]:
    """The global options of buildah and podman for the e2e storage (overlay where it mounts)."""
    store = cache_root() / "storage"
    store.mkdir(parents=True, exist_ok=True)
    driver = storage_driver(store)
    return [
        "--root",
        str(store / driver / "root"),
        "--runroot",
        str(store / driver / "runroot"),
        "--storage-driver",
        driver,
    ]


@dataclass(frozen=True)
class ImageSpec:
    """One image: its reference (without tag), Dockerfile, build context and the files hashed."""

    ref: str
    dockerfile: Path
    context: Path
    inputs: tuple[Path, ...]
    base: str | None = None
    extra: str = ""  # hashed too: what is not a file in the context (the builder tarball's digest)


def _files(paths: tuple[Path, ...]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
        else:
            for child in sorted(path.rglob("*")):
                if child.is_file() and "__pycache__" not in child.parts and child.suffix != ".pyc":
                    yield child


def content_hash(spec: ImageSpec, base_id: str) -> str:
    digest = hashlib.sha256(f"{spec.ref}\0{base_id}\0{spec.extra}\0".encode())
    for path in _files((spec.dockerfile, *spec.inputs)):
        # paths relative to the context or the repository: a scratch context's name must not count
        base = spec.context if path.is_relative_to(spec.context) else REPO
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def buildah(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["buildah", *storage_options(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"e2e images: buildah {args[0]} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def image_id(ref: str) -> str | None:
    done = subprocess.run(
        ["buildah", *storage_options(), "images", "--quiet", "--no-trunc", ref],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.split()[0] if done.returncode == 0 and done.stdout.strip() else None


def debian_base(log: list[str]) -> str:
    """localhost/buildfarm-e2e/debian:bookworm from the sbuild base tarball (its OCI layout, cached)."""
    settings = load_settings()
    ref = f"{E2E_PREFIX}/debian:{settings.buildenv.distribution}"
    tarball = ensure_base_tarball(
        settings.buildenv.tarball, settings.buildenv.distribution, settings.buildenv.mirror, progress=print
    )
    layout = base_layout(tarball, settings.buildenv.cache_dir, settings.buildenv.distribution, progress=print)
    tag = f"{E2E_PREFIX}/debian:h-{layout.name[-16:]}"
    if image_id(tag) is None:
        started = time.monotonic()
        options = storage_options()
        store = f"[{options[5]}@{options[1]}+{options[3]}]"
        done = subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                f"oci:{layout}:{settings.buildenv.distribution}",
                f"containers-storage:{store}{tag}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"e2e images: importing the Debian base failed: {done.stderr.strip()}")
        log.append(f"debian base imported from {layout.name} in {time.monotonic() - started:.0f} s")
    buildah("tag", tag, ref)
    return ref


def build(spec: ImageSpec, log: list[str]) -> str:
    base_id = image_id(spec.base) or "" if spec.base else ""
    hashed = f"{spec.ref}:h-{content_hash(spec, base_id)}"
    if image_id(hashed) is None:
        started = time.monotonic()
        print(f"e2e images: building {hashed}", flush=True)
        args = [
            "bud",
            "--isolation",
            "chroot",
            "--layers",
            "--pull-never",
            "-f",
            str(spec.dockerfile),
            "-t",
            hashed,
        ]
        if spec.base:
            args += ["--build-arg", f"BASE_IMAGE={spec.base}"]
        done = subprocess.run(
            ["buildah", *storage_options(), *args, str(spec.context)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
            raise SystemExit(f"e2e images: building {spec.ref} failed:\n{tail}")
        log.append(f"{spec.ref} built in {time.monotonic() - started:.0f} s")
    else:
        log.append(f"{spec.ref} cached ({hashed.rsplit(':', 1)[1]})")
    buildah("tag", hashed, f"{spec.ref}:{TAG}")
    return f"{spec.ref}:{TAG}"


@contextmanager
def _lock() -> Iterator[None]:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".images.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_all() -> dict[str, str]:
    """Build (or find cached) every image; returns name -> reference."""
    log: list[str] = []
    refs: dict[str, str] = {}
    with _lock(), tempfile.TemporaryDirectory(prefix="e2e-images-") as scratch:
        work = Path(scratch)
        debian = debian_base(log)
        refs["debian"] = debian

        python_ctx = work / "python"
        shutil.copytree(HERE / "images" / "python", python_ctx)
        shutil.copy(HOST_CA, python_ctx / "host-ca.crt")
        python = build(
            ImageSpec(f"{E2E_PREFIX}/python", python_ctx / "Dockerfile", python_ctx, (python_ctx,), debian),
            log,
        )
        refs["python"] = python
        for name in ("postgres", "redis", "registry"):
            ctx = HERE / "images" / name
            refs[name] = build(
                ImageSpec(f"{E2E_PREFIX}/{name}", ctx / "Dockerfile", ctx, (ctx,), debian), log
            )
        ctx = HERE / "images" / "minio"
        refs["minio"] = build(ImageSpec(f"{E2E_PREFIX}/minio", ctx / "Dockerfile", ctx, (ctx,), python), log)
        kaniko_ctx = work / "kaniko"
        shutil.copytree(HERE / "images" / "kaniko", kaniko_ctx)
        stand_in = REPO / "tests" / "kubekit" / "imagebuilder.py"  # standard library only
        shutil.copy(stand_in, kaniko_ctx / "imagebuilder.py")
        refs["kaniko"] = build(
            ImageSpec(f"{E2E_PREFIX}/kaniko", kaniko_ctx / "Dockerfile", kaniko_ctx, (kaniko_ctx,), python),
            log,
        )

        images = REPO / "buildtools" / "images"
        refs["farm"] = build(
            ImageSpec(
                f"{FARM_PREFIX}/farm",
                images / "farm" / "Dockerfile",
                REPO,
                (
                    REPO / "pyproject.toml",
                    REPO / "README.md",
                    REPO / "services",
                    REPO / "buildtools" / "buildfarm_cli",
                    REPO / "buildtools" / "client" / "buildfarm_client",
                ),
                python,
            ),
            log,
        )
        refs["pulp"] = build(
            ImageSpec(
                f"{FARM_PREFIX}/pulp",
                images / "pulp" / "Dockerfile",
                images / "pulp",
                (images / "pulp",),
                python,
            ),
            log,
        )
        settings = load_settings()
        tarball = ensure_builder_tarball(
            settings.buildenv.tarball,
            settings.buildenv.distribution,
            settings.buildenv.mirror,
            progress=print,
        )
        builder_ctx = work / "package-builder"
        builder_ctx.mkdir()
        try:
            os.link(tarball, builder_ctx / "builder.tar")
        except OSError:
            shutil.copy(tarball, builder_ctx / "builder.tar")
        shutil.copy(REPO / "buildtools" / "builder" / "buildfarm-step", builder_ctx / "buildfarm-step")
        refs["package-builder"] = build(
            ImageSpec(
                f"{FARM_PREFIX}/package-builder",
                images / "package-builder" / "Dockerfile",
                builder_ctx,
                (builder_ctx / "buildfarm-step",),
                extra=tarball_digest(tarball),
            ),
            log,
        )
    for line in log:
        print(f"e2e images: {line}")
    return refs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    started = time.monotonic()
    refs = build_all()
    for name, ref in refs.items():
        print(f"e2e images: {name:16} {ref}")
    print(f"e2e images: done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
