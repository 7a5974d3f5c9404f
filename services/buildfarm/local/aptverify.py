"""Prove a published repository with the real apt: update, download, compare with the store.

``buildfarm repo verify`` (and ``make demo``) use this to show that what the farm published is
what apt gets, byte for byte.  A signed repository is read as a user reads it: its apt line
with ``signed-by`` pointing at the farm's public key (and no ``trusted=yes``), so a Release file
that does not verify with that key fails the update. A repository server that cannot be reached
is a temporary error (exit 3: try again later), not a verdict on what was published.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from buildfarm.backends.base import require_signing_key
from buildfarm.engine.advance import producing_step_id
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import moves_latest
from buildfarm.local.aptclient import AptClient, AptError
from buildfarm.model.errors import NotFoundError, PermanentError, ServiceUnavailableError
from buildfarm.model.types import BuildState
from buildfarm.state.models import Build, StepOutput


@dataclass
class VerifiedPackage:
    package: str
    filename: str
    sha256: str
    identical: bool


def _published_build(ctx: FarmContext, project: str, branch: str, build_id: int | None) -> Build:
    with ctx.db.session() as session:
        query = select(Build).where(
            Build.project == project, Build.branch == branch, Build.state == BuildState.SUCCEEDED
        )
        if build_id is not None:
            query = query.where(Build.id == build_id)
        candidates = [
            b
            for b in session.scalars(query.order_by(Build.id.desc()))
            if build_id is not None or moves_latest(b.kind)
        ]
        if not candidates:
            raise NotFoundError(
                f"no successful build of {project}/{branch}"
                + (f" with id {build_id}" if build_id is not None else "")
            )
        build = candidates[0]
        _ = build.steps  # load while the session is open
        return build


def verify(ctx: FarmContext, project: str, branch: str, build_id: int | None = None) -> list[VerifiedPackage]:
    """apt-get update + download every .deb of the build behind ``latest`` (or ``build_id``)."""
    build = _published_build(ctx, project, branch, build_id)
    source = ctx.repo.sources(project, branch, build_id)
    with ctx.db.session() as session:
        producers = [producing_step_id(s) for s in build.steps]
        outputs = session.scalars(select(StepOutput).where(StepOutput.step_id.in_(producers))).all()
    debs = sorted((o.filename, o.sha256) for o in outputs if o.filename.endswith(".deb"))
    # name_version_arch.deb: each architecture's package is fetched as apt on that architecture would
    arches = {filename.removesuffix(".deb").rsplit("_", 1)[-1] for filename, _ in debs} - {"all"}
    results = []
    # What `buildfarm repo key` prints: apt verifies the Release file with it alone.
    public_key = require_signing_key(ctx.repo).public_key if source.signed_by is not None else None
    with tempfile.TemporaryDirectory(prefix="buildfarm-apt-") as workdir:
        apt = AptClient(Path(workdir), source.line(), public_key, tuple(sorted(arches)))
        try:
            apt.update()
            for filename, sha256 in debs:
                package, _version, arch = filename.removesuffix(".deb").split("_", 2)
                downloaded = apt.download(package if arch == "all" else f"{package}:{arch}")
                digest = hashlib.sha256(downloaded.read_bytes()).hexdigest()
                results.append(VerifiedPackage(package, downloaded.name, sha256, digest == sha256))
        except AptError as exc:
            if _unreachable(exc):
                raise ServiceUnavailableError(
                    f"the repository server does not answer ({source.url}): {_reason(exc)}"
                ) from exc
            raise PermanentError(f"apt could not use {source.line()}: {_reason(exc)}") from exc
    return results


UNREACHABLE = (
    "Could not connect to",
    "Connection failed",
    "Connection timed out",
    "Unable to connect to",
    "Temporary failure resolving",
    "Could not resolve",
)
"""apt's words for a server it could not talk to (as opposed to what the server answered)."""


def _unreachable(exc: AptError) -> bool:
    return any(marker in str(exc) for marker in UNREACHABLE)


def _reason(exc: AptError) -> str:
    """The line of apt's output that says why: a signature's verdict, else its first error."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    for marker in ("GPG error", *UNREACHABLE, "E: "):
        found = next((line for line in lines if marker in line), None)
        if found is not None:
            return found
    return lines[0]
