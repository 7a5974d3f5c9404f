"""A big manifest of trivial packages submitted in process, built and published: shared by the
benches of submit and re-run (``scale.py``, ``rerun.py``).

No farm: the engine with a recording dispatcher (``tests/farmkit.py``), every step marked built
with a tiny real .deb made in process (``dpkg-deb --build`` for each of thousands of packages
would take minutes), then published, as a real re-run follows a published build: the re-run's
publication finds its packages in the repository already.
"""

from __future__ import annotations

import io
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from buildfarm.engine import advance_build  # noqa: E402
from buildfarm.engine.context import FarmContext  # noqa: E402
from buildfarm.engine.submit import submit_build  # noqa: E402
from buildfarm.engine.workdirs import REMOVALS  # noqa: E402
from buildfarm.model.manifest import Manifest, load_manifest  # noqa: E402
from buildfarm.model.types import StepState  # noqa: E402
from buildfarm.state.models import Step, StepOutput, utcnow  # noqa: E402

from debpkgs import make_package, write_manifest  # noqa: E402
from farmkit import make_test_context  # noqa: E402


def trivial_sources(src: Path, count: int, prefix: str) -> list[str]:
    names = [f"{prefix}{i:05d}" for i in range(count)]
    for name in names:
        make_package(src, name)
    return names


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tiny_deb(name: str, version: str) -> bytes:
    """A minimal real .deb of binary ``name`` (source ``name``), made in process."""
    control = f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: bench <b@b.invalid>\n"
    control += f"Description: bench package {name}\n"
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", _tar_gz({"./control": control.encode()})),
        ("data.tar.gz", _tar_gz({f"./usr/share/{name}/payload": name.encode()})),
    ]
    out = [b"!<arch>\n"]
    for member, data in members:
        out.append(f"{member:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def built(ctx: FarmContext, build_id: int) -> None:
    """Record every step of the build as built, each with a .deb of its package in the store."""
    with ctx.db.session() as session:
        for step in session.scalars(select(Step).where(Step.build_id == build_id)):
            deb = ctx.store.put_bytes(tiny_deb(step.name, step.version))
            step.state, step.finished_at, step.attempt = StepState.SUCCEEDED, utcnow(), 1
            filename = f"{step.name}_{step.version}_all.deb"
            session.add(
                StepOutput(step_id=step.id, attempt=1, filename=filename, sha256=deb.sha256, size=deb.size)
            )


@dataclass(frozen=True)
class BigBuild:
    """The source trees and manifest of a big build (``src``, read by every submit of it)."""

    src: Path
    manifest: Manifest


def big_sources(src: Path, count: int) -> BigBuild:
    """``count`` trivial source trees under ``src`` and the manifest naming them."""
    names = trivial_sources(src, count, "big")
    return BigBuild(src, load_manifest(write_manifest(src, names, project="big")))


def big_context(farm: Path, database_url: str) -> FarmContext:
    """The in-process farm of the big build: state under ``farm``, the database at ``database_url``."""
    return make_test_context(farm, database_url)


def submit(ctx: FarmContext, big: BigBuild) -> int:
    return submit_build(ctx, big.manifest, big.src, "bench")


def publish_as_built(ctx: FarmContext, build_id: int) -> None:
    """Mark the build's steps built (:func:`built`) and advance it: it is published (and its
    publication's scratch removed: the removal runs beside the build's end, a copy of the state
    made at once would meet files going away)."""
    built(ctx, build_id)
    advance_build(ctx, build_id)
    REMOVALS.wait()


def reused_steps(ctx: FarmContext, build_id: int) -> int:
    with ctx.db.session() as session:
        return session.query(Step).filter(Step.build_id == build_id, Step.reused_from.is_not(None)).count()
