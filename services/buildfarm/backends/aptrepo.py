"""The package repository of the local profile: plain flat APT repositories in a directory.

Production publishes into Pulp; locally every build gets its own flat repository
(``deb [signed-by=<key>] <url> ./``) whose indexes Debian's own ``apt-ftparchive`` writes, so what
apt reads here is what apt reads anywhere.  With a signer (the farm's key,
:mod:`buildfarm.backends.signing`) every published build's ``Release`` gets ``InRelease`` and
``Release.gpg`` inside the same temp tree, before the rename that makes it visible; without one
(or for staging trees, which only the farm's own builders read) the line says ``[trusted=yes]``.
Layout under ``root`` (names via ``to_safe``)::

    <project>/<branch>/builds/<id>/           one build's own distribution, never changed again
    <project>/<branch>/latest -> builds/<id>  moved by successful non-personal builds only
    <project>/<branch>/staging/<id> -> .<id>-gen-*/   what a running build's later steps install from
    <project>/_personal/<user>/<id>/          personal builds; ``latest`` is never touched

Personal builds live under ``_personal`` rather than ``personal``: ``to_safe`` always escapes
``_`` as ``_5f``, so no branch name can map to that directory (a branch may be called
``personal``).  Every directory apt can see appears by one rename of a complete temp directory
and every symlink is switched by ``os.replace``, so a client sees the old state or the new one,
never a half-written one.  One ``fcntl`` lock per branch (or personal) directory serializes
writers from any process.

Retention: :meth:`LocalAptRepository.expire_build` renames a build's directory aside (apt sees it
vanish at once) and removes it; the packages are hardlinks of the artifact store's objects, so
their bytes go when the store's object goes too.  There is no pool to sweep: ``collect_garbage``
removes what crashed writers left (temp trees, staging generations no link points at, expired
directories not yet removed).

Configured 3rd-party mirrors are not copied here: with no Pulp, builds read each mirror's
upstream directly (:meth:`LocalAptRepository.mirror_sources` gives the upstream lines), and
``sync_mirror`` only checks that the upstream answers with the Release file and Packages
indexes the configuration names (:mod:`buildfarm.backends.upstream`).
"""

from __future__ import annotations

import fcntl
import gzip
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from buildfarm.backends.base import AptSource, BuildRef, MirrorStatus, PackageFile
from buildfarm.backends.fs import file_sha256, fsync_dir
from buildfarm.backends.signing import ReleaseSigner, SigningKey
from buildfarm.backends.upstream import check_upstream, upstream_source
from buildfarm.model import names
from buildfarm.model.errors import NotFoundError, PermanentError, ServiceUnavailableError
from buildfarm.model.mirrors import check_mirrors
from buildfarm.model.settings import DEFAULT_SIGNING_KEYRING, MirrorConfig

log = logging.getLogger(__name__)

PERSONAL_DIR = "_personal"
EXPIRED_PREFIX = ".expired-"
LOCK_FILE = ".lock"
LOCK_TIMEOUT_SECONDS = 120.0
"""Longest wait for another process's publish/stage of the same branch; indexing takes seconds."""
LOCK_POLL_SECONDS = 0.05
TOOL_TIMEOUT_SECONDS = 300.0
"""Bound on one apt-ftparchive run; it hashes every package, minutes only for gigabytes."""

_INDEXED_SUFFIX = ".deb"  # apt-ftparchive's default; .udeb files are stored but not indexed
_PACKAGE_SUFFIXES = (".deb", ".udeb")
_SOURCE_SUFFIXES = (".dsc", ".tar.gz", ".tar.xz", ".tar.bz2", ".tar.lzma", ".diff.gz", ".asc")
"""A source package's files: the .dsc, its tarballs (upstream, debian, component), .diff.gz, .asc."""
_FILENAME_FIELD = re.compile(r"^Filename: \./(.+)$", re.MULTILINE)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``directory`` (created if needed), waiting at most the bound."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ServiceUnavailableError(
                        f"repository {directory} stayed locked for {LOCK_TIMEOUT_SECONDS:.0f}s",
                        retry_after=30.0,
                    ) from None
                time.sleep(LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _run_ftparchive(args: list[str], cwd: Path) -> bytes:
    exe = shutil.which("apt-ftparchive")
    if exe is None:
        raise PermanentError(
            "apt-ftparchive is not installed: install the Debian package apt-utils "
            "(apt-get install apt-utils)"
        )
    try:
        done = subprocess.run(
            [exe, *args],
            cwd=cwd,
            capture_output=True,
            timeout=TOOL_TIMEOUT_SECONDS,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnavailableError(
            f"apt-ftparchive {args[0]} in {cwd} took over {TOOL_TIMEOUT_SECONDS:.0f}s"
        ) from exc
    stderr = done.stderr.decode(errors="replace").strip()
    if done.returncode != 0:
        raise PermanentError(f"apt-ftparchive {args[0]} failed in {cwd}: {stderr}")
    if args[0] == "packages":
        # apt-ftparchive reports an unreadable .deb on stderr yet exits 0; an index missing a
        # package would publish a build that cannot be installed, so compare what it indexed.
        indexed = set(_FILENAME_FIELD.findall(done.stdout.decode("utf-8", "replace")))
        expected = {p.name for p in cwd.iterdir() if p.name.endswith(_INDEXED_SUFFIX)}
        if indexed != expected:
            raise PermanentError(
                f"apt-ftparchive could not index {', '.join(sorted(expected - indexed)) or 'some packages'}: "
                + stderr.replace("\n", "; ")
            )
    return done.stdout


def _check_filename(filename: str) -> str:
    # Only package names: a file called "Release" or "Packages" would overwrite the indexes.
    plain = "/" not in filename and "\0" not in filename and not filename.startswith(".")
    if not plain or not filename.endswith(_PACKAGE_SUFFIXES + _SOURCE_SUFFIXES):
        raise PermanentError(
            f"invalid package file name {filename!r}: it must be one plain *.deb or *.udeb "
            "or a source package's file (.dsc and the files it names)"
        )
    return filename


def _place(packages: list[PackageFile], into: Path) -> None:
    """Hardlink (same filesystem) or copy each package into ``into``, checking its sha256."""
    seen: dict[str, str] = {}
    for package in packages:
        name = _check_filename(package.filename)
        if name in seen:
            if seen[name] != package.sha256:
                raise PermanentError(f"two different packages are both named {name}")
            continue  # the same file listed twice is published once
        seen[name] = package.sha256
        dest = into / name
        try:
            os.link(package.path, dest)
        except OSError:
            shutil.copyfile(package.path, dest)  # another filesystem, or links not allowed
        sha256, size = file_sha256(dest)
        if sha256 != package.sha256 or size != package.size:
            raise PermanentError(
                f"{package.path} does not match its record (sha256 {sha256}, {size} bytes; "
                f"expected {package.sha256}, {package.size} bytes)"
            )


def _write_indexes(directory: Path, label: str) -> None:
    """Write Packages, Packages.gz and Release of the flat repository ``directory``."""
    packages = _run_ftparchive(["packages", "."], directory)
    _write_file(directory / "Packages", packages)
    # mtime=0: the same packages always give the same Packages.gz bytes.
    _write_file(directory / "Packages.gz", gzip.compress(packages, mtime=0))
    if any(directory.glob("*.dsc")):  # the build's source packages: apt-get source reads these
        sources = _run_ftparchive(["sources", "."], directory)
        _write_file(directory / "Sources", sources)
        _write_file(directory / "Sources.gz", gzip.compress(sources, mtime=0))
    release = _run_ftparchive(
        [
            "-o",
            "APT::FTPArchive::Release::Origin=buildfarm",
            "-o",
            f"APT::FTPArchive::Release::Label={label}",
            "release",
            ".",
        ],
        directory,
    )
    _write_file(directory / "Release", release)


def _build_tree(
    parent: Path, prefix: str, packages: list[PackageFile], label: str, signer: ReleaseSigner | None = None
) -> Path:
    """A complete, indexed (and, with ``signer``, signed) repository in a new hidden directory of
    ``parent``; removed on error."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        _place(packages, tmp)
        _write_indexes(tmp, label)
        if signer is not None:
            signer.sign(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the HTTP server may run as another user
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _switch_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (relative) in one atomic step."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.{time.time_ns()}")
    os.symlink(target, tmp)
    try:
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)  # a real directory cannot be replaced by a rename
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


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
        _run_ftparchive(["--version"], self.root.parent if self.root.parent.is_dir() else Path("/"))
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

    def stage(self, build: BuildRef, packages: list[PackageFile]) -> AptSource:
        branch_dir = self._branch_dir(build.project, build.branch)
        staging = branch_dir / "staging"
        link = staging / str(build.build_id)
        prefix = f".{build.build_id}-gen-"
        with _locked(branch_dir):
            generation = _build_tree(staging, prefix, packages, f"{build.project}/{build.branch} staging")
            _switch_symlink(link, generation.name)
            for old in staging.glob(f"{prefix}*"):
                if old != generation:
                    shutil.rmtree(old, ignore_errors=True)
        return self._source(link)

    def drop_staging(self, build: BuildRef) -> None:
        branch_dir = self._branch_dir(build.project, build.branch)
        staging = branch_dir / "staging"
        if not staging.is_dir():
            return
        with _locked(branch_dir):
            link = staging / str(build.build_id)
            if link.is_symlink() or link.is_file():
                link.unlink()
            elif link.is_dir():
                shutil.rmtree(link)
            for generation in staging.glob(f".{build.build_id}-gen-*"):
                shutil.rmtree(generation, ignore_errors=True)

    def publish(self, build: BuildRef, packages: list[PackageFile], move_latest: bool) -> AptSource:
        if build.kind == "personal":
            lock_dir = self._personal_dir(build.project, build.user)
            target = lock_dir / str(build.build_id)
            label = f"{build.project} personal build {build.build_id} of {build.user}"
            move_latest = False  # personal builds never change what everyone else installs
        else:
            lock_dir = self._branch_dir(build.project, build.branch)
            target = lock_dir / "builds" / str(build.build_id)
            label = f"{build.project}/{build.branch}"
        with _locked(lock_dir):
            if target.is_dir():
                log.info("build %s is already published at %s; keeping it", build.build_id, target)
            else:
                # Leftovers of a publish that crashed: nobody else writes here while we hold the lock.
                for stale in target.parent.glob(f".tmp-{target.name}-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                tree = _build_tree(target.parent, f".tmp-{target.name}-", packages, label, self.signer)
                os.rename(tree, target)
                fsync_dir(target.parent)
            if move_latest:
                self._move_latest(lock_dir, build.build_id)
        return self._source(target)

    def _move_latest(self, branch_dir: Path, build_id: int) -> None:
        latest = branch_dir / "latest"
        current = _latest_build_id(latest)
        # Build ids grow with submission: a late retry of an older build must not hide a newer one.
        if current is not None and current > build_id:
            log.info("latest of %s stays at build %s (newer than %s)", branch_dir, current, build_id)
            return
        _switch_symlink(latest, f"builds/{build_id}")

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
        if build.kind == "personal":
            lock_dir = self._personal_dir(build.project, build.user)
            target = lock_dir / str(build.build_id)
        else:
            lock_dir = self._branch_dir(build.project, build.branch)
            target = lock_dir / "builds" / str(build.build_id)
        if not lock_dir.is_dir():
            return
        with _locked(lock_dir):
            if build.kind != "personal" and _latest_build_id(lock_dir / "latest") == build.build_id:
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
        for lock_file in sorted(self.root.glob(f"*/*/{LOCK_FILE}")) + sorted(
            self.root.glob(f"*/{PERSONAL_DIR}/*/{LOCK_FILE}")
        ):
            directory = lock_file.parent
            if directory.name == PERSONAL_DIR:
                continue
            with _locked(directory):
                for leftover in _leftovers(directory):
                    freed += _tree_bytes(leftover)
                    shutil.rmtree(leftover, ignore_errors=True)
        return freed

    def mirror_sources(self) -> list[AptSource]:
        """The upstream lines of every configured mirror: apt reads the 3rd party directly."""
        return [upstream_source(mirror) for mirror in self.mirrors]

    def usable_mirrors(self) -> dict[str, AptSource]:
        return {mirror.name: upstream_source(mirror) for mirror in self.mirrors}

    def sync_mirror(self, mirror: MirrorConfig) -> MirrorStatus:
        """Nothing to copy: check that the upstream answers (Release, Packages) and count its packages."""
        return check_upstream(mirror)


def _leftovers(directory: Path) -> list[Path]:
    """Temp trees of crashed publishes, expired builds not yet removed, unlinked staging generations."""
    found: list[Path] = []
    for parent in (directory, directory / "builds"):
        found += [p for p in parent.glob(".tmp-*") if p.is_dir()]
        found += [p for p in parent.glob(f"{EXPIRED_PREFIX}*") if p.is_dir()]
    staging = directory / "staging"
    if staging.is_dir():
        linked = {os.readlink(link) for link in staging.iterdir() if link.is_symlink()}
        found += [p for p in staging.glob(".*-gen-*") if p.is_dir() and p.name not in linked]
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


def _latest_build_id(latest: Path) -> int | None:
    try:
        target = os.readlink(latest)
    except FileNotFoundError:
        return None
    name = Path(target).name
    return int(name) if name.isdigit() else None
