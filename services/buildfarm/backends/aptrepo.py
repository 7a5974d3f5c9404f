"""The package repository of the local profile: plain flat APT repositories in a directory.

Production publishes into Pulp; locally every build gets its own flat repository
(``deb [signed-by=<key>] <url> ./``) whose indexes Debian's own ``apt-ftparchive`` writes, so what
apt reads here is what apt reads anywhere.  With a signer (the farm's key,
:mod:`buildfarm.backends.signing`) every published build's ``Release`` gets ``InRelease`` and
``Release.gpg`` inside the same temp tree, before the rename that makes it visible; without one
(or for staging trees, which only the farm's own builders read) the line says ``[trusted=yes]``.
Layout under ``root`` (names via ``to_safe``)::

    <project>/<branch>/builds/<id>/           the branch as this build left it (below)
    <project>/<branch>/latest -> builds/<id>  moved by successful non-personal builds only
    <project>/<branch>/staging/<id> -> .<id>-gen-*/   what a running build's later steps install from
    <project>/<branch>/staging/.<id>-pool/            its packages (:mod:`.aptstaging`)
    <project>/_personal/<user>/<id>/          personal builds; ``latest`` is never touched

As in Pulp, a branch carries its packages forward: a build's tree holds what ``latest`` held
with the build's own source packages merged in (a newer version of a source package replaces
all of the older one's binaries; :mod:`buildfarm.backends.aptbranch` has the rules), so
``latest`` is the union of the newest successful build of every package the branch has built,
and ``builds/<id>`` is the branch at that build, as Pulp's ``<project>/<branch>/<id>``.  A
personal build's tree is the branch's ``latest`` with its own packages over it (whatever their
versions), again as in Pulp.  Source packages (.dsc and the files it names) go with their
binaries: a tree's ``Sources`` index lists the source package of every package it carries, so
``apt-get source`` works on ``latest`` for the whole branch.  Packages carried forward are
hardlinks of the tree they come from.

Personal builds live under ``_personal`` rather than ``personal``: ``to_safe`` always escapes
``_`` as ``_5f``, so no branch name can map to that directory (a branch may be called
``personal``).  Every directory apt can see appears by one rename of a complete temp directory
and every symlink is switched by ``os.replace``, so a client sees the old state or the new one,
never a half-written one.  One ``fcntl`` lock per branch (or personal) directory serializes
writers from any process.

Retention: :meth:`LocalAptRepository.expire_build` renames a build's directory aside (apt sees it
vanish at once) and removes it; the packages are hardlinks of the artifact store's objects, so
their bytes go when the store's object goes too.  There is no shared pool to sweep: ``collect_garbage``
removes what crashed writers left (temp trees, staging generations no link points at, pools
of stagings gone, expired directories not yet removed).

Configured 3rd-party mirrors are not copied here: with no Pulp, builds read each mirror's
upstream directly (:meth:`LocalAptRepository.mirror_sources` gives the upstream lines), and
``sync_mirror`` only checks that the upstream answers with the Release file and Packages
indexes the configuration names (:mod:`buildfarm.backends.upstream`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from buildfarm.backends import aptbranch, aptstaging, apttree
from buildfarm.backends.aptbranch import BranchState
from buildfarm.backends.base import AptSource, BuildRef, Fetch, PackageFile, StoredPackage
from buildfarm.backends.fs import fsync_dir
from buildfarm.backends.signing import ReleaseSigner, SigningKey
from buildfarm.backends.upstream import check_upstream, upstream_source
from buildfarm.model import names
from buildfarm.model.errors import NotFoundError, PermanentError, TemporaryError
from buildfarm.model.mirrors import check_mirrors
from buildfarm.model.settings import DEFAULT_SIGNING_KEYRING, MirrorConfig
from buildfarm.model.types import BuildKind
from buildfarm_client.models import MirrorSyncOut

log = logging.getLogger(__name__)

PERSONAL_DIR = "_personal"
EXPIRED_PREFIX = ".expired-"


class LocalAptRepository:
    """:class:`~buildfarm.backends.base.PackageRepository` as flat APT repositories in a directory."""

    def __init__(
        self,
        root: Path,
        base_url: str,
        mirrors: list[MirrorConfig] | None = None,
        *,
        signer: ReleaseSigner | None = None,
        keyring: str = DEFAULT_SIGNING_KEYRING,
    ) -> None:
        self.root = Path(root).absolute()
        self.base_url = base_url.rstrip("/")
        self.mirrors = check_mirrors(list(mirrors or []))
        self.signer = signer
        self.keyring = keyring
        """The signed-by path of signed lines: where users keep the public key."""

    def check(self) -> None:
        apttree.run_ftparchive(["--version"], self.root.parent if self.root.parent.is_dir() else Path("/"))
        if self.signer is None:
            log.warning(
                "no signing_key_file: published repositories are unsigned (apt lines say [trusted=yes])"
            )
        else:
            self.signer.check()

    def signing_key(self) -> SigningKey | None:
        return self.signer.signing_key() if self.signer is not None else None

    # -- where things are --------------------------------------------------------------------

    def _branch_dir(self, project: str, branch: str) -> Path:
        names.check_simple_name(project, "project")
        names.check_ref_name(branch, "branch")
        return self.root / names.to_safe(project) / names.to_safe(branch)

    def _personal_dir(self, project: str, user: str) -> Path:
        names.check_simple_name(project, "project")
        names.check_simple_name(user, "user")
        return self.root / names.to_safe(project) / PERSONAL_DIR / names.to_safe(user)

    def _source(self, path: Path) -> AptSource:
        # Signed-by only where the tree is signed: builds published before the farm had a key stay
        # [trusted=yes], and staging trees are never signed.
        signed = self.signer is not None and (path / "InRelease").is_file()
        return AptSource(
            url=f"{self.base_url}/{path.relative_to(self.root).as_posix()}",
            signed_by=self.keyring if signed else None,
            sources=(path / "Sources").is_file(),
        )

    # -- PackageRepository -----------------------------------------------------------------

    def stage(self, build: BuildRef, packages: Sequence[StoredPackage], fetch: Fetch) -> AptSource:
        """Grow the build's staging repository to ``packages`` (:mod:`.aptstaging`: only new
        packages are fetched and indexed)."""
        branch_dir = self._branch_dir(build.project, build.branch)
        staging = branch_dir / "staging"
        with apttree.locked(branch_dir):
            staging.mkdir(parents=True, exist_ok=True)
            label = f"{build.project}/{build.branch} staging"
            aptstaging.stage(staging, build.build_id, packages, fetch, label)
        return self._source(staging / str(build.build_id))

    def drop_staging(self, build: BuildRef) -> None:
        branch_dir = self._branch_dir(build.project, build.branch)
        staging = branch_dir / "staging"
        if not staging.is_dir():
            return
        with apttree.locked(branch_dir):
            aptstaging.drop(staging, build.build_id)

    def publish(self, build: BuildRef, packages: list[PackageFile], move_latest: bool) -> AptSource:
        """Publish the build's tree: the branch's packages with the build's merged in (see
        :mod:`.aptbranch`), then, unless the build is personal, switch ``latest`` to it.

        The tree is built whole in a temp directory and appears by one rename; ``latest`` moves
        by one ``os.replace``.  Publishing a build again (a retry after a crash) keeps the
        packages it was first published with and merges them again into what ``latest`` holds
        now, so a build that crashed before moving ``latest`` is not lost to later builds.
        """
        branch_dir = self._branch_dir(build.project, build.branch)
        if build.kind == BuildKind.PERSONAL:
            personal_dir = self._personal_dir(build.project, build.user)
            # Branch lock first (the same order everywhere): the tree we merge onto stays put.
            with apttree.locked(branch_dir), apttree.locked(personal_dir):
                target = personal_dir / str(build.build_id)
                if target.is_dir():
                    log.info("build %s is already published at %s; keeping it", build.build_id, target)
                else:
                    label = f"{build.project} personal build {build.build_id} of {build.user}"
                    self._publish_fresh(branch_dir, target, build.build_id, packages, label, personal=True)
            return self._source(target)
        label = f"{build.project}/{build.branch}"
        target = branch_dir / "builds" / str(build.build_id)
        with apttree.locked(branch_dir):
            if target.is_dir():
                if move_latest:
                    self._publish_again(branch_dir, target, build.build_id, label)
                else:
                    log.info("build %s is already published at %s; keeping it", build.build_id, target)
            else:
                self._publish_fresh(branch_dir, target, build.build_id, packages, label, personal=False)
                if move_latest:
                    apttree.switch_symlink(branch_dir / "latest", f"builds/{build.build_id}")
        return self._source(target)

    def held_files(self, build: BuildRef, files: Sequence[StoredPackage]) -> dict[str, Path]:
        """Those of ``files`` the branch's ``latest`` holds (same name, sha256 and size), where its
        tree keeps them: :class:`~buildfarm.backends.base.HoldsPackages`."""
        base, where = self._latest_state(self._branch_dir(build.project, build.branch))
        recorded = _recorded(base)
        return {
            f.filename: where[f.filename]
            for f in files
            if recorded.get(f.filename) == (f.sha256, f.size) and f.filename in where
        }

    def _latest_state(self, branch_dir: Path) -> tuple[BranchState, Mapping[str, Path]]:
        """What ``latest`` holds, and where each of its files is (empty: nothing published yet).

        A ``latest`` published before trees carried their record held only its own build's
        packages, and so does every older tree: the branch is then the merge of all of them,
        which gives back the packages earlier builds brought (once: the next tree has a record).
        """
        latest_id = _latest_build_id(branch_dir / "latest")
        if latest_id is None:
            return {}, {}
        tree = branch_dir / "builds" / str(latest_id)
        if (tree / aptbranch.STATE_FILE).is_file():
            recorded = aptbranch.read_state(tree, latest_id)
            return recorded, _where(recorded, tree)
        state: BranchState = {}
        builds = sorted(int(p.name) for p in (branch_dir / "builds").iterdir() if p.name.isdigit())
        for build_id in builds:
            old = branch_dir / "builds" / str(build_id)
            if (old / "Release").is_file():
                state = aptbranch.merge(state, aptbranch.read_state(old, build_id), prefer_incoming=False)
        # Read from its own tree's index, each source package's files are in that tree.
        where = {
            f.filename: branch_dir / "builds" / str(entry.build_id) / f.filename
            for entry in state.values()
            for f in entry.files
        }
        log.info(
            "%s: latest has no record yet; merged the %d trees published before it", branch_dir, len(builds)
        )
        return state, where

    def _publish_fresh(
        self,
        branch_dir: Path,
        target: Path,
        build_id: int,
        packages: list[PackageFile],
        label: str,
        *,
        personal: bool,
    ) -> None:
        """Write ``target``: what ``latest`` holds with the build's ``packages`` merged in."""
        for package in packages:
            apttree.check_filename(package.filename)
        base, where = self._latest_state(branch_dir)
        recorded = _recorded(base)
        present: dict[Path, bool] = {}  # by directory: a published tree appears and goes whole
        packages = [_still_held(p, recorded, where, present) for p in packages]
        binaries = [p for p in packages if p.filename.endswith((".deb", ".udeb"))]
        # The build's source packages (.dsc and files): recorded with the binaries they built,
        # so they are carried forward with them (a source package that lost stays out).  What
        # latest records already is not read again (a no-change re-run reads no package).
        sources = [p for p in packages if not p.filename.endswith((".deb", ".udeb"))]
        # Leftovers of a publish that crashed: nobody else writes here while we hold the lock.
        for stale in target.parent.glob(f".tmp-{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        indexed = _index_new(target, binaries, sources, base)
        described = aptbranch.describe(binaries, build_id, known=base, indexed=indexed)
        own = aptbranch.attach_sources(described, sources, known=base, indexed=indexed)
        merged = aptbranch.merge(base, own, prefer_incoming=personal)
        by_name = {p.filename: p for p in packages}
        mine = [entry for entry in merged.values() if entry.build_id == build_id]
        names = [f.filename for entry in mine for f in entry.files]
        names += [f.filename for entry in mine for f in entry.sources]
        kept = {name for name in names if name in by_name}
        # Checked by describe: linked like carried packages (a copy is hashed again).
        carried = [by_name[name] for name in sorted(kept)] + _carried(merged, where, skip=kept)
        tree = self._merged_tree(branch_dir, target, label, carried, merged, indexed)
        os.rename(tree, target)
        fsync_dir(target.parent)

    def _merged_tree(  # noqa: PLR0917 - the pieces of one tree
        self,
        branch_dir: Path,
        target: Path,
        label: str,
        carried: list[PackageFile],
        merged: BranchState,
        indexed: Mapping[str, str] | None = None,
    ) -> Path:
        """The tree of ``merged`` (every package linked from where it is published), beside
        ``target`` under a temporary name, index stanzas taken from latest's where unchanged
        and from ``indexed`` (the build's own, by file name: :func:`_index_new`)."""
        return apttree.build_tree(
            target.parent,
            f".tmp-{target.name}-",
            [],
            label,
            self.signer,
            carried=carried,
            state=merged,
            known=_latest_tree(branch_dir),
            indexed=indexed,
        )

    def _publish_again(self, branch_dir: Path, target: Path, build_id: int, label: str) -> None:
        """A build published before: make sure ``latest`` holds what it brought (see :meth:`publish`)."""
        if _latest_build_id(branch_dir / "latest") == build_id:
            return
        published = aptbranch.read_state(target, build_id)
        own = {name: entry for name, entry in published.items() if entry.build_id == build_id}
        base, where = self._latest_state(branch_dir)
        merged = aptbranch.merge(base, own, prefer_incoming=False)
        if where and merged == base:
            log.info("build %s is already published and latest holds what it brought", build_id)
            return
        if merged != published:
            # Another build moved latest between our rename and our switch: merge onto it again.
            mine = _where(own, target)
            carried = _carried(merged, {**where, **mine}, skip=set())
            tree = self._merged_tree(branch_dir, target, label, carried, merged)
            aside = target.with_name(f"{EXPIRED_PREFIX}{target.name}-{time.time_ns()}")
            os.rename(target, aside)
            os.rename(tree, target)
            fsync_dir(target.parent)
            shutil.rmtree(aside, ignore_errors=True)
        apttree.switch_symlink(branch_dir / "latest", f"builds/{build_id}")

    def sources(self, project: str, branch: str, build_id: int | None = None) -> AptSource:
        branch_dir = self._branch_dir(project, branch)
        if build_id is None:
            latest = branch_dir / "latest"
            if not (latest / "Release").is_file():
                raise NotFoundError(f"no successful build of {project}/{branch} has been published yet")
            return self._source(latest)
        published = branch_dir / "builds" / str(build_id)
        if (published / "Release").is_file():
            return self._source(published)
        personal_root = self.root / names.to_safe(project) / PERSONAL_DIR
        for candidate in sorted(personal_root.glob(f"*/{build_id}")):
            if (candidate / "Release").is_file():
                return self._source(candidate)
        raise NotFoundError(f"build {build_id} of {project}/{branch} has not been published")

    # -- retention ---------------------------------------------------------------------------

    def expire_build(self, build: BuildRef) -> None:
        self.drop_staging(build)  # normally gone already; a crashed build's is not
        if build.kind == BuildKind.PERSONAL:
            lock_dir = self._personal_dir(build.project, build.user)
            target = lock_dir / str(build.build_id)
        else:
            lock_dir = self._branch_dir(build.project, build.branch)
            target = lock_dir / "builds" / str(build.build_id)
        if not lock_dir.is_dir():
            return
        with apttree.locked(lock_dir):
            if build.kind != BuildKind.PERSONAL and _latest_build_id(lock_dir / "latest") == build.build_id:
                raise PermanentError(
                    f"build {build.build_id} is what latest of {build.project}/{build.branch} serves; "
                    "it is not expired"
                )
            if not target.is_dir():
                return
            aside = target.with_name(f"{EXPIRED_PREFIX}{target.name}-{time.time_ns()}")
            os.rename(target, aside)  # apt sees the whole build vanish at once
            fsync_dir(target.parent)
            shutil.rmtree(aside)

    def collect_garbage(self) -> int:
        """Remove what crashed writers left under every branch and personal directory; bytes freed.

        Each directory is cleaned under its lock, so a publish or stage in progress (which holds
        it) never loses its temp tree.  Costs one directory listing per branch.
        """
        freed = 0
        for lock_file in sorted(self.root.glob(f"*/*/{apttree.LOCK_FILE}")) + sorted(
            self.root.glob(f"*/{PERSONAL_DIR}/*/{apttree.LOCK_FILE}")
        ):
            directory = lock_file.parent
            if directory.name == PERSONAL_DIR:
                continue
            with apttree.locked(directory):
                for leftover in _leftovers(directory):
                    freed += _tree_bytes(leftover)
                    shutil.rmtree(leftover, ignore_errors=True)
        return freed

    def mirror_sources(self) -> list[AptSource]:
        """The upstream lines of every configured mirror: apt reads the 3rd party directly."""
        return [upstream_source(mirror) for mirror in self.mirrors]

    def usable_mirrors(self) -> dict[str, AptSource]:
        return {mirror.name: upstream_source(mirror) for mirror in self.mirrors}

    def sync_mirror(self, mirror: MirrorConfig) -> MirrorSyncOut:
        """Nothing to copy: check that the upstream answers (Release, Packages) and count its packages."""
        return check_upstream(mirror)


def _index_new(
    target: Path, binaries: list[PackageFile], sources: list[PackageFile], base: BranchState
) -> dict[str, str]:
    """The index stanzas of the build's packages and .dsc files ``base`` (latest's record) does
    not hold, by file name: apt-ftparchive reads each of them once, in two runs at once (over
    scratch trees of hardlinks beside ``target``), and its stanzas say both what the record
    needs (:func:`.aptbranch.describe`, :func:`.aptbranch.attach_sources`) and what the tree's
    indexes hold (the same bytes it writes over the whole tree)."""
    held = {(f.filename, f.sha256, f.size) for f in aptbranch.files_of(base)}
    held |= {
        (e.sources[0].filename, e.sources[0].sha256, e.sources[0].size) for e in base.values() if e.sources
    }
    new_debs = [p for p in binaries if (p.filename, p.sha256, p.size) not in held]
    new_dscs = {
        p.filename
        for p in sources
        if p.filename.endswith(".dsc") and (p.filename, p.sha256, p.size) not in held
    }
    # A new .dsc with the files of its source package (``<source>_...``, as Debian names them;
    # apt-ftparchive needs them): a .dsc naming another file gets no stanza here, and is parsed.
    names = {dsc.split("_", 1)[0] for dsc in new_dscs}
    source_files = [
        p
        for p in sources
        if p.filename in new_dscs
        or (not p.filename.endswith(".dsc") and p.filename.split("_", 1)[0] in names)
    ]
    prefix = f".tmp-{target.name}-index-"
    target.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="index") as pool:
        packages = pool.submit(apttree.index_files, target.parent, prefix, "packages", new_debs)
        dscs = pool.submit(apttree.index_files, target.parent, prefix, "sources", source_files)
    return {**packages.result(), **dscs.result()}


def _recorded(state: BranchState) -> dict[str, tuple[str, int]]:
    """(sha256, size) of every file (binary or source) ``state`` records, by filename."""
    listed: list[aptbranch.BinaryFile | aptbranch.SourceFile] = [*aptbranch.files_of(state)]
    listed += aptbranch.source_files_of(state)
    return {f.filename: (f.sha256, f.size) for f in listed}


def _still_held(
    package: PackageFile,
    recorded: dict[str, tuple[str, int]],
    where: Mapping[str, Path],
    present: dict[Path, bool],
) -> PackageFile:
    """``package`` as it is, unless its copy is gone: a copy in a published tree (from
    :meth:`LocalAptRepository.held_files`) whose tree was expired after ``latest`` moved.  Then
    the tree ``latest`` records it in now, or a temporary error: publishing again fetches it.

    A tree is expired whole (renamed aside, then removed), so whether its directory is there
    says whether its files are (``present``, by directory, asked once each): a re-run of
    thousands of packages does not stat each."""
    parent = package.path.parent
    if parent not in present:
        present[parent] = parent.is_dir()
    if present[parent]:
        return package
    now = where.get(package.filename)
    if recorded.get(package.filename) == (package.sha256, package.size) and now is not None:
        return PackageFile(package.filename, package.sha256, package.size, now)
    raise TemporaryError(
        f"{package.filename} was in latest when publishing began and is gone from it now "
        "(latest moved); publishing again fetches it"
    )


class _TreeFiles(Mapping[str, Path]):
    """Where each file of a published tree's record is, each path made when asked for: a
    publication onto a branch of thousands of packages asks for few of them (a no-change re-run
    for none)."""

    def __init__(self, names: set[str], tree: Path) -> None:
        self._names = names
        self._tree = tree

    def __getitem__(self, name: str) -> Path:
        if name not in self._names:
            raise KeyError(name)
        return self._tree / name

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _where(state: BranchState, tree: Path) -> Mapping[str, Path]:
    """Where each file (binary or source) of ``state`` is: in the published ``tree``."""
    names = {f.filename for entry in state.values() for f in entry.files}
    names |= {f.filename for entry in state.values() for f in entry.sources}
    return _TreeFiles(names, tree)


def _carried(state: BranchState, where: Mapping[str, Path], *, skip: set[str]) -> list[PackageFile]:
    """The files of ``state`` (binaries and source packages, but ``skip``) as packages to link
    from the published trees ``where`` says they are in."""
    listed: list[aptbranch.BinaryFile | aptbranch.SourceFile] = [*aptbranch.files_of(state)]
    listed += aptbranch.source_files_of(state)
    files = [f for f in listed if f.filename not in skip]
    missing = [f.filename for f in files if f.filename not in where]
    if missing:
        raise PermanentError(f"the branch's record names {', '.join(missing)}, which no published tree holds")
    return [PackageFile(f.filename, f.sha256, f.size, where[f.filename]) for f in files]


def _leftovers(directory: Path) -> list[Path]:
    """Temp trees of crashed publishes, expired builds not yet removed, unlinked staging generations."""
    found: list[Path] = []
    for parent in (directory, directory / "builds"):
        found += [p for p in parent.glob(".tmp-*") if p.is_dir()]
        found += [p for p in parent.glob(f"{EXPIRED_PREFIX}*") if p.is_dir()]
    staging = directory / "staging"
    if staging.is_dir():
        found += aptstaging.orphans(staging)
    return found


def _tree_bytes(tree: Path) -> int:
    """Bytes that removing ``tree`` frees: files with no other hard link (packages linked from the
    artifact store stay there)."""
    total = 0
    for path in tree.rglob("*"):
        stat = path.lstat()
        if path.is_file() and not path.is_symlink() and stat.st_nlink == 1:
            total += stat.st_size
    return total


def _latest_tree(branch_dir: Path) -> Path | None:
    """The published tree ``latest`` serves (its index stanzas are reused: :func:`.apttree.write_indexes`)."""
    latest_id = _latest_build_id(branch_dir / "latest")
    return branch_dir / "builds" / str(latest_id) if latest_id is not None else None


def _latest_build_id(latest: Path) -> int | None:
    try:
        target = os.readlink(latest)
    except FileNotFoundError:
        return None
    name = Path(target).name
    return int(name) if name.isdigit() else None
