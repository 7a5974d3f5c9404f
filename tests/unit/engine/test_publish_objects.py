"""A publication on the local store takes its packages and source bundles where the store keeps
them (its objects are files here), checked, not copied: what apt sees is what a publication from
fetched copies shows, byte for byte, and a damaged object is never published."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from buildfarm.backends import aptbranch, apttree
from buildfarm.backends.base import LocalObjects, PackageFile
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.engine import advance_build, bundlefiles
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.model.manifest import load_manifest
from buildfarm.model.types import BuildState, StepState
from buildfarm.state.models import Build, Step, StepOutput, utcnow

from debpkgs import build_deb, make_package, write_manifest
from farmkit import make_test_context

NAMES = ["alpha", "beta", "gamma"]
PUBLISHED = ("Packages", "Packages.gz", "Sources", "Sources.gz", "buildfarm-sources.json")


class _FetchOnly:
    """The same store seen through :class:`~buildfarm.backends.base.ArtifactStore` alone (as
    S3 is): every object a publication reads is fetched."""

    def __init__(self, store: FsArtifactStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        if name == "object_path":
            raise AttributeError(name)
        return getattr(self._store, name)


def _published(
    tmp_path: Path, src: Path, debs: dict[str, PackageFile], *, fetch_only: bool
) -> tuple[FarmContext, int]:
    """A build of NAMES (sources in ``src``), each step with its .deb of ``debs``, published."""
    tmp_path.mkdir()
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    assert isinstance(ctx.store, FsArtifactStore)
    if fetch_only:
        ctx.store = _FetchOnly(ctx.store)  # type: ignore[assignment]
        assert not isinstance(ctx.store, LocalObjects)
    build_id = submit_build(ctx, load_manifest(write_manifest(src, NAMES, project="p")), src, "u")
    with ctx.db.session() as session:
        for step in session.scalars(select(Step).where(Step.build_id == build_id)):
            deb = debs[step.name]
            ctx.store.put_file(deb.path)
            step.state, step.finished_at, step.attempt = StepState.SUCCEEDED, utcnow(), 1
            session.add(
                StepOutput(
                    step_id=step.id, attempt=1, filename=deb.filename, sha256=deb.sha256, size=deb.size
                )
            )
    advance_build(ctx, build_id)
    return ctx, build_id


def _tree(ctx: FarmContext, build_id: int) -> Path:
    return ctx.settings.state_dir / "repos/p/main/builds" / str(build_id)


def test_objects_taken_in_place_publish_what_fetched_copies_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same build published from the store's objects and from fetched copies: the same
    files, the same index bytes (Packages, Sources, compressed too: what apt-ftparchive writes
    over the whole tree) and the same record; the packages of the first are hardlinks of the
    store's objects.  Each new .deb and .dsc is read once, by apt-ftparchive: its stanzas give
    the record too (no python-debian reading of them)."""
    read: list[str] = []
    for module, name in ((aptbranch, "deb_fields"), (aptbranch, "source_package")):
        real = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda path, *a, real=real, **k: (read.append(path.name), real(path, *a, **k))[1]
        )
    src = tmp_path / "src"
    for name in NAMES:
        make_package(src, name)
    debs = {name: build_deb(tmp_path / "debs", name, "1.0", source=name) for name in NAMES}
    in_place, first = _published(tmp_path / "in-place", src, debs, fetch_only=False)
    fetched, second = _published(tmp_path / "fetched", src, debs, fetch_only=True)
    trees = _tree(in_place, first), _tree(fetched, second)
    for ctx, build_id in ((in_place, first), (fetched, second)):
        with ctx.db.session() as session:
            assert session.get_one(Build, build_id).state == BuildState.SUCCEEDED
    names = [sorted(p.name for p in tree.iterdir()) for tree in trees]
    assert names[0] == names[1]
    assert sum(name.endswith(".dsc") for name in names[0]) == len(NAMES)
    for name in names[0]:
        if name not in ("Release", "InRelease", "Release.gpg"):  # Release says when it was made
            assert (trees[0] / name).read_bytes() == (trees[1] / name).read_bytes(), name
    for name in PUBLISHED:
        assert (trees[0] / name).stat().st_size > 0, name
    assert (trees[0] / "Packages").read_bytes() == apttree.run_ftparchive(["packages", "."], trees[0])
    assert (trees[0] / "Sources").read_bytes() == apttree.run_ftparchive(["sources", "."], trees[0])
    assert read == []
    store = in_place.store
    assert isinstance(store, FsArtifactStore)
    for deb in (name for name in names[0] if name.endswith(".deb")):
        sha256 = _output_sha256(in_place, deb)
        assert os.path.samestat((trees[0] / deb).stat(), store.object_path(sha256).stat())
    # the bundles' listings are remembered once published: a re-run fetches none
    with in_place.db.session() as session:
        bundles = list(session.scalars(select(Step.source_sha256).where(Step.build_id == first)))
    assert all(bundlefiles.listings(in_place.work_root, bundles).values())
    in_place.db.dispose()
    fetched.db.dispose()


def _output_sha256(ctx: FarmContext, filename: str) -> str:
    with ctx.db.session() as session:
        return session.scalars(select(StepOutput.sha256).where(StepOutput.filename == filename)).one()


def test_a_damaged_object_is_not_published(tmp_path: Path) -> None:
    """An object whose bytes no longer hash to its name is neither published nor linked: the
    fetch it falls back to quarantines it and the build fails saying so; latest does not move."""
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    store = ctx.store
    assert isinstance(store, FsArtifactStore)
    src = tmp_path / "src"
    make_package(src, "alpha")
    build_id = submit_build(ctx, load_manifest(write_manifest(src, ["alpha"], project="p")), src, "u")
    deb = build_deb(tmp_path / "debs", "alpha", "1.0", source="alpha")
    store.put_file(deb.path)
    damaged = store.object_path(deb.sha256)
    damaged.chmod(0o644)
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"X")  # same size, other bytes
    with ctx.db.session() as session:
        step = session.scalars(select(Step).where(Step.build_id == build_id)).one()
        step.state, step.finished_at, step.attempt = StepState.SUCCEEDED, utcnow(), 1
        session.add(
            StepOutput(step_id=step.id, attempt=1, filename=deb.filename, sha256=deb.sha256, size=deb.size)
        )
    advance_build(ctx, build_id)
    with ctx.db.session() as session:
        build = session.get_one(Build, build_id)
        assert build.state == BuildState.FAILED
        assert build.error is not None and "corrupt" in build.error, build.error
    assert not _tree(ctx, build_id).exists()
    assert not (ctx.settings.state_dir / "repos/p/main/latest").exists()
    assert not damaged.exists()  # quarantined: the next put of those bytes heals it
    ctx.db.dispose()
