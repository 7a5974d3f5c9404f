"""A no-change re-run publishes what the repository holds already without fetching or reading it
again (issue 16 part 5): no source bundle, no .deb from the store, no .dsc parsed, no package
indexed again (apt-ftparchive reads only what latest's indexes do not describe)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from sqlalchemy import select

from buildfarm.backends import aptbranch, apttree
from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.base import BuildRef, PackageFile
from buildfarm.engine import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.model.errors import TemporaryError
from buildfarm.model.manifest import load_manifest
from buildfarm.model.types import BuildKind, BuildState, StepState
from buildfarm.state.models import Build, Step, StepOutput, utcnow

from debpkgs import build_deb, make_package, write_manifest
from farmkit import make_test_context

NAMES = ["alpha", "beta"]


def _built(ctx: FarmContext, build_id: int, debs: Path) -> None:
    """Record every step of the build as built, each with a real .deb of its source package."""
    with ctx.db.session() as session:
        for step in session.scalars(select(Step).where(Step.build_id == build_id)):
            deb = build_deb(debs, step.name, "1.0", source=step.name)
            ctx.store.put_file(deb.path)
            step.state, step.finished_at, step.attempt = StepState.SUCCEEDED, utcnow(), 1
            session.add(
                StepOutput(
                    step_id=step.id, attempt=1, filename=deb.filename, sha256=deb.sha256, size=deb.size
                )
            )


def test_a_no_change_rerun_publishes_without_fetching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    src = tmp_path / "src"
    for name in NAMES:
        make_package(src, name)
    manifest = load_manifest(write_manifest(src, NAMES, project="p"))
    first = submit_build(ctx, manifest, src, "u")
    _built(ctx, first, tmp_path / "debs")
    advance_build(ctx, first)  # publishes: fetches both .debs and both source bundles

    fetched: list[str] = []
    fetch = ctx.store.fetch
    monkeypatch.setattr(
        ctx.store, "fetch", lambda sha256, dest: (fetched.append(sha256), fetch(sha256, dest))[1]
    )
    parsed: list[str] = []
    parse = aptbranch.source_package
    monkeypatch.setattr(
        aptbranch, "source_package", lambda path, *a, **k: (parsed.append(path.name), parse(path, *a, **k))[1]
    )
    again = submit_build(ctx, manifest, src, "u")
    advance_build(ctx, again)

    with ctx.db.session() as session:
        build = session.get_one(Build, again)
        assert build.state == BuildState.SUCCEEDED, build.error
        assert all(step.reused_from is not None for step in build.steps)
    assert fetched == []  # was 4: both .debs and both source bundles
    assert parsed == []  # was 2: both .dsc files
    tree = ctx.settings.state_dir / "repos/p/main/builds" / str(again)
    packages = (tree / "Packages").read_text()
    sources = (tree / "Sources").read_text()
    for name in NAMES:
        assert f"Package: {name}\n" in packages
        assert f"Package: {name}\n" in sources
        assert (tree / f"{name}_1.0.dsc").is_file()
    ctx.db.dispose()


def test_a_held_copy_gone_before_the_publish_is_a_temporary_error(tmp_path: Path) -> None:
    """A copy :meth:`held_files` named whose tree went (latest moved, the old tree expired) and
    that latest no longer holds: publishing waits and tries again (it then fetches the file)."""
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    deb = build_deb(tmp_path / "debs", "gamma", "1.0")
    gone = PackageFile(deb.filename, deb.sha256, deb.size, tmp_path / "expired-tree" / deb.filename)
    with pytest.raises(TemporaryError, match="gone from it now"):
        ctx.repo.publish(BuildRef(9, "p", "main", BuildKind.NIGHTLY, "u"), [gone], move_latest=True)
    ctx.db.dispose()


def _record_indexed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The .deb and .dsc files every apt-ftparchive run from now on is given to index."""
    indexed: list[str] = []
    run = apttree.run_ftparchive

    def recording(args: list[str], cwd: Path) -> bytes:
        if args[0] in ("packages", "sources"):
            indexed.extend(sorted(p.name for p in cwd.iterdir() if p.name.endswith((".deb", ".dsc"))))
        return run(args, cwd)

    monkeypatch.setattr(apttree, "run_ftparchive", recording)
    return indexed


def _full_indexes(tree: Path) -> tuple[bytes, bytes]:
    """What apt-ftparchive writes over the whole published tree: Packages and Sources."""
    return apttree.run_ftparchive(["packages", "."], tree), apttree.run_ftparchive(["sources", "."], tree)


def test_a_no_change_rerun_indexes_no_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """latest's stanzas are taken for the same files: the re-run's indexes are the bytes a full
    apt-ftparchive run writes, without apt-ftparchive opening one .deb or .dsc."""
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}")
    src = tmp_path / "src"
    for name in NAMES:
        make_package(src, name)
    manifest = load_manifest(write_manifest(src, NAMES, project="p"))
    first = submit_build(ctx, manifest, src, "u")
    _built(ctx, first, tmp_path / "debs")
    advance_build(ctx, first)

    indexed = _record_indexed(monkeypatch)
    again = submit_build(ctx, manifest, src, "u")
    advance_build(ctx, again)

    with ctx.db.session() as session:
        assert session.get_one(Build, again).state == BuildState.SUCCEEDED
    assert indexed == []  # was alpha's and beta's .deb and .dsc
    tree = ctx.settings.state_dir / "repos/p/main/builds" / str(again)
    packages, sources = _full_indexes(tree)
    assert (tree / "Packages").read_bytes() == packages
    assert (tree / "Sources").read_bytes() == sources
    # The same index bytes as the tree before: its files, compressed ones too, not written again.
    before = tree.parent / str(first)
    for index in ("Packages", "Packages.gz", "Sources", "Sources.gz"):
        assert (tree / index).stat().st_ino == (before / index).stat().st_ino, index
    assert gzip.decompress((tree / "Packages.gz").read_bytes()) == packages
    ctx.db.dispose()


def test_a_changed_package_alone_is_indexed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish whose one package is new (another version) and another whose bytes changed
    under the same name index those, and take the unchanged one's stanza from latest."""
    repo = LocalAptRepository(tmp_path / "repos", "http://127.0.0.1:9/")
    debs = tmp_path / "debs"
    alpha = build_deb(debs, "alpha", "1.0")
    beta = build_deb(debs, "beta", "1.0")
    repo.publish(BuildRef(1, "p", "main", BuildKind.NIGHTLY, "u"), [alpha, beta], move_latest=True)

    indexed = _record_indexed(monkeypatch)
    newer = build_deb(debs, "beta", "1.1")
    gamma = build_deb(debs / "other", "gamma", "1.0")
    rebuilt = build_deb(debs / "again", "gamma", "1.0", payload="other bytes, same name")
    repo.publish(BuildRef(2, "p", "main", BuildKind.NIGHTLY, "u"), [alpha, newer, gamma], move_latest=True)
    repo.publish(BuildRef(3, "p", "main", BuildKind.NIGHTLY, "u"), [alpha, newer, rebuilt], move_latest=True)

    assert indexed == [newer.filename, gamma.filename, rebuilt.filename]
    tree = tmp_path / "repos/p/main/builds/3"
    packages = (tree / "Packages").read_text()
    assert (tree / "Packages").read_bytes() == _full_indexes(tree)[0]
    assert f"SHA256: {rebuilt.sha256}\n" in packages
    assert f"SHA256: {gamma.sha256}\n" not in packages
    assert (tree / "Packages.gz").stat().st_ino != (tree.parent / "2" / "Packages.gz").stat().st_ino
    assert gzip.decompress((tree / "Packages.gz").read_bytes()) == (tree / "Packages").read_bytes()
