"""Every way a manifest names a package ends as one Debian source package: a .dsc and its files.

Each entry kind is one small resolver returning a checked :class:`SourcePackage` in a scratch
directory:

* a **tree** (``path``, ``git``, or a tree a remote client uploaded): ``dpkg-source -b`` on a
  normalised copy, with the upstream tarballs (and ``.asc``) beside it: named in ``orig``, found
  beside the directory as dpkg-source looks (``../<source>_<upstream>.orig*.tar.*``), or uploaded
  with the tree.  Debian's tool does the format work; quilt is never re-implemented here;
* a **.dsc** of the manifest's tree, or an http(s) URL to one (what ``dget`` does), with an
  optional ``signed_by`` key its signature must verify against;
* a **git-buildpackage** repository (``git`` + ``layout: gbp``): a tree whose upstream tarball
  ``gbp export-orig`` makes (:mod:`buildfarm.engine.gbpsource`);
* a **StarlingX** package directory (``stx``): ``meta_data.yaml`` and its ``patches/``,
  ``deb_patches/`` and ``deb_folder/``, repacked as StarlingX's ``debrepack`` does
  (:mod:`buildfarm.engine.stxsource`);
* a **source** name (and version) from the farm's configured mirrors, as ``apt-get source``
  takes it: the mirror's Release (signature checked when the mirror has a key) names the
  Sources index's sha256, the index names the .dsc's, the .dsc names its files'.

Every file fetched from outside is checked against its checksum, stored content-addressed in the
artifact store and recorded as a **build input** (:class:`~buildfarm.state.models.BuildInput`),
which retention keeps forever.  A file whose checksum is known is taken from the store when it
is there, so a second build (another branch, a restore) never downloads it again and still
builds after the upstream URL has gone.  A URL is fetched once: its content is taken as
immutable, as Debian's pool files are (their names carry their version).

The copy of a tree is made through the deterministic source tarball (mtimes 0, fixed modes),
so ``dpkg-source -b`` makes the same bytes from the same tree wherever it was read.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from debian.deb822 import Sources
from debian.debian_support import Version
from sqlalchemy import select

from buildfarm.backends.upstream import read_release
from buildfarm.engine.context import FarmContext
from buildfarm.engine.dpkgsource import PACK_THREADS, DpkgSourceForks, shared_forks
from buildfarm.engine.gbpsource import export_orig
from buildfarm.engine.srccache import SourceCache, StoredSource, dpkg_source_version
from buildfarm.engine.stxsource import StxResolver
from buildfarm.model.debsource import (
    ARMORED_KEY_BEGIN,
    FORMATS,
    TARBALL_SUFFIXES,
    DscFile,
    SourcePackage,
    file_sha256,
    is_upstream_file,
    needs_upstream,
    pack_source_package,
    read_dsc,
    source_key,
    source_package,
    tree_format,
    upstream_files_in,
    upstream_version,
)
from buildfarm.model.errors import ManifestError, PermanentError, TemporaryError
from buildfarm.model.manifest import PackageSource, SourceLayout, UpstreamFile
from buildfarm.model.planner import SourceInfo, read_source_info, source_info_from_dsc
from buildfarm.model.settings import MirrorConfig
from buildfarm.model.sources import copy_tree, tree_hash
from buildfarm.model.urlpolicy import UrlPolicy, UrlRefusedError, check_url, redact_url
from buildfarm.state.models import BuildInput, utcnow

DPKG_SOURCE_TIMEOUT_SECONDS = 600
"""``dpkg-source -b`` of a big package (compressing a large debian/ or native tree) takes minutes."""
HTTP_TIMEOUT_SECONDS = 60.0
"""Seconds without a byte from the server before a download is given up (temporary)."""
MAX_DOWNLOAD_BYTES = 4 << 30
"""An upstream tarball larger than 4 GiB is refused rather than filling the disk."""
GPG_TIMEOUT_SECONDS = 30.0
MAX_REDIRECTS = 5
"""Redirects followed per download (each checked against the URL policy); more is a loop."""
_CHUNK = 1 << 20
_INDEX_UNPACK: dict[str, Callable[[bytes], bytes]] = {
    ".xz": lzma.decompress,
    ".gz": gzip.decompress,
    ".bz2": bz2.decompress,
    "": lambda data: data,
}


def check_fetch_url(url: str, policy: UrlPolicy, what: str) -> str:
    """Every URL fetched on a user's behalf passes the farm's URL policy (scheme, public or
    admin-allowed host: :mod:`buildfarm.model.urlpolicy`) just before it is fetched."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ManifestError(f"{what}: {redact_url(url)!r} is not an http(s) URL")
    try:
        check_url(url, policy)
    except UrlRefusedError as exc:
        raise ManifestError(f"{what}: {exc}") from exc
    except TemporaryError as exc:
        raise TemporaryError(f"{what}: {exc}", exc.retry_after) from exc
    return url


@dataclass(frozen=True)
class TreeToPack:
    """A tree whose source package is still to be made: what the planner needs of it (read
    from its ``debian/``) and ``pack``, which runs ``dpkg-source -b`` and stores the result."""

    info: SourceInfo
    pack: Callable[[], StoredSource]


class SourceResolver:
    """Resolves the packages of one submit into source packages under ``scratch``."""

    def __init__(
        self,
        ctx: FarmContext,
        root: Path,
        scratch: Path,
        uploaded_files: dict[int, Path] | None = None,
    ) -> None:
        self.ctx = ctx
        self.root = root
        self.scratch = scratch
        self.uploaded_files = uploaded_files or {}
        self.cache = SourceCache(ctx)
        self.forks = shared_forks(dpkg_source_env())
        """Packing a tree runs dpkg-source from the process's preloaded Perls (kept after it)."""
        self._beside: dict[Path, dict[str, list[str]]] = {}
        self._beside_lock = threading.Lock()

    def upstream_beside(self, tree: Path, source: str, version: str) -> list[Path]:
        """:func:`~buildfarm.model.debsource.upstream_files_beside`, with the parent directory
        listed once per submit: a branch's thousands of trees share one directory, and listing
        it again for each tree made a submit quadratic (minutes at 5000 packages)."""
        parent = tree.parent
        with self._beside_lock:
            by_source = self._beside.get(parent)
            if by_source is None:
                by_source = {}
                names = sorted(p.name for p in parent.iterdir()) if parent.is_dir() else []
                for name in names:  # an upstream file is <source>_<version>.orig...
                    by_source.setdefault(name.split("_", 1)[0], []).append(name)
                self._beside[parent] = by_source
        return [
            parent / name
            for name in by_source.get(source, [])
            if is_upstream_file(name, source, version) and (parent / name).is_file()
        ]

    def resolve(
        self, index: int, package: PackageSource, tree: Path | None
    ) -> tuple[SourcePackage, SourceInfo]:
        """The package's source package and what the planner needs of it: read from the tree's
        debian/control when there is a tree (dpkg-source drops Build-Depends alternatives that
        an earlier one implies, and the planner counts every alternative), else from the .dsc."""
        srcpkg = self._resolve(index, package, tree)
        if tree is not None:
            return srcpkg, read_source_info(tree, package.describe())
        return srcpkg, source_info_from_dsc(dsc_fields(srcpkg), package.describe())

    def _resolve(self, index: int, package: PackageSource, tree: Path | None) -> SourcePackage:
        what = f"packages[{index}] ({package.describe()})"
        work = self.scratch / f"srcpkg-{index}"
        work.mkdir()
        files = self.uploaded_files.get(index)
        if tree is not None and package.layout is SourceLayout.GBP:
            assert package.git is not None
            made = self.scratch / f"gbp-{index}"
            export_orig(package.git, tree, made, what, self.ctx.settings.fetch.url_policy)
            return self._from_tree(package, tree, work, made, what)
        if tree is not None:
            return self._from_tree(package, tree, work, files, what)
        if package.stx is not None:
            return StxResolver(self, package.stx, work, what).resolve()
        if package.dsc is not None and package.dsc.startswith(("http://", "https://")):
            key = self._signing_key(package, what)
            return self.from_dsc_url(package.dsc, work, what, key)
        if package.dsc is not None:
            directory = files if files is not None else (self.root / package.dsc).resolve().parent
            dsc = directory / Path(package.dsc).name
            return self._from_dsc_file(dsc, work, what, self._signing_key(package, what))
        assert package.source is not None
        return self.from_archive(package.source, package.version, work, what)

    # -- trees: dpkg-source -b ---------------------------------------------------------------

    def known_facts(self, package: PackageSource, tree: Path | None) -> tuple[str, SourceInfo, str] | None:
        """The remembered facts of the package's tree (:meth:`SourceCache.known_facts`), given to
        :meth:`examine`; None for a package that is no tree read in place, or a tree not
        remembered as it is."""
        if tree is None or package.layout is SourceLayout.GBP:
            return None
        return self.cache.known_facts(tree)

    def examine(
        self,
        index: int,
        package: PackageSource,
        tree: Path | None,
        facts: tuple[str, SourceInfo, str] | None = None,
    ) -> StoredSource | TreeToPack:
        """The package's source package, packed into the artifact store: what the planner needs
        of it, its source key and the packed tarball's sha256; or, for a tree whose tree key was
        never packed (:mod:`buildfarm.engine.srccache`), what the planner needs of it now and
        the ``dpkg-source -b`` still to run (:meth:`TreeToPack.pack`), so a submit can plan and
        record the build first and pack while the first steps build.  Every check of the tree
        (format, upstream tarballs) is made here, before anything is recorded.  ``facts``: the
        tree's, as :meth:`known_facts` gave them (else read here)."""
        if tree is None or package.layout is SourceLayout.GBP:
            srcpkg, info = self.resolve(index, package, tree)
            return self._store(srcpkg, info)
        what = f"packages[{index}] ({package.describe()})"
        work = self.scratch / f"srcpkg-{index}"
        if package.orig:
            work.mkdir()  # where the files named in 'orig' go; else made only on a miss
        digest, info, fmt = facts or self.cache.tree_facts(tree, package.describe())
        info, fmt, found, beside_dsc = self._tree_inputs(
            package, tree, work, self.uploaded_files.get(index), what, info, fmt
        )
        key = self.cache.key(fmt, digest, found, beside_dsc)
        hit = self.cache.lookup(key, what)
        if hit is not None:
            for path in found:  # kept as build inputs, as when the package was made
                self._keep_input(path, str(path) if package.path else what)
            source, sha256 = hit
            return StoredSource(info, source, sha256)

        def pack() -> StoredSource:
            work.mkdir(exist_ok=True)
            made = self._make_from_tree(tree, info.name, info.version, found, beside_dsc, work, what, package)
            stored = self._store(made, info)
            self.cache.remember(key, stored.source_key, stored.sha256)
            return stored

        return TreeToPack(info, pack)

    def _store(self, srcpkg: SourcePackage, info: SourceInfo) -> StoredSource:
        sha256 = self.ctx.store.put_bytes(pack_source_package(srcpkg)).sha256
        return StoredSource(info, source_key(srcpkg), sha256)

    def _from_tree(
        self, package: PackageSource, tree: Path, work: Path, files: Path | None, what: str
    ) -> SourcePackage:
        info, _fmt, found, beside_dsc = self._tree_inputs(package, tree, work, files, what)
        return self._make_from_tree(tree, info.name, info.version, found, beside_dsc, work, what, package)

    def _tree_inputs(  # noqa: PLR0917 - the pieces of one tree
        self,
        package: PackageSource,
        tree: Path,
        work: Path,
        files: Path | None,
        what: str,
        info: SourceInfo | None = None,
        fmt: str | None = None,
    ) -> tuple[SourceInfo, str, list[Path], Path | None]:
        """What a tree's source package is made from: its source info and format (each read
        unless given), the upstream files dpkg-source takes, and the .dsc beside it that may
        already be it."""
        if info is None:
            info = read_source_info(tree, package.describe())
        if fmt is None:
            fmt = tree_format(tree)
        if fmt not in FORMATS:
            raise PermanentError(f"{what}: source format {fmt!r} is not one of {', '.join(FORMATS)}")
        upstream = upstream_version(info.version)
        if package.orig:
            found = [
                self._orig(item, info.name, info.version, work, what, files=files) for item in package.orig
            ]
        elif files is not None:
            found = upstream_files_in(files, info.name, info.version)
        elif package.path is not None:
            found = self.upstream_beside(tree, info.name, info.version)
        else:
            found = []
        main = [p for p in found if re.search(r"\.orig\.tar\.[a-z0-9]+$", p.name)]
        if needs_upstream(fmt, info.version) and not main:
            looked = (
                "the files named in 'orig'"
                if package.orig
                else (
                    f"{tree.parent}"
                    if package.path is not None
                    else "nowhere (a git tree has none beside it)"
                )
            )
            raise PermanentError(
                f"{what}: source format {fmt} needs the upstream tarball "
                f"{info.name}_{upstream}.orig.tar.{{gz,bz2,xz,lzma}}; looked in {looked} "
                "(put it beside the directory or name it with 'orig')"
            )
        if not needs_upstream(fmt, info.version):
            found = []  # a native package has none, even when a tarball lies around
        noepoch = info.version.split(":", 1)[-1]
        beside_dsc = None
        if package.path is not None and not package.orig:
            beside_dsc = (files if files is not None else tree.parent) / f"{info.name}_{noepoch}.dsc"
        return info, fmt, found, beside_dsc

    def _make_from_tree(  # noqa: PLR0917 - the pieces _from_tree found
        self,
        tree: Path,
        name: str,
        version: str,
        found: list[Path],
        beside_dsc: Path | None,
        work: Path,
        what: str,
        package: PackageSource,
    ) -> SourcePackage:
        noepoch = version.split(":", 1)[-1]
        upstream = upstream_version(version)
        if beside_dsc is not None:
            same = self._dsc_beside(tree, beside_dsc, work, what)
            if same is not None:
                return same
        copy = work / f"{name}-{upstream}"
        copy_tree(tree, copy)  # what unpack_tree makes of pack_tree(tree): modes and mtimes set
        for path in found:
            if path.parent != work:
                shutil.copyfile(path, work / path.name)
            self._keep_input(work / path.name, str(path) if package.path else what)
        _dpkg_source(["-b", copy.name], work, what, self.forks)
        shutil.rmtree(copy)
        return source_package(work / f"{name}_{noepoch}.dsc", what)

    def _dsc_beside(self, tree: Path, dsc: Path, work: Path, what: str) -> SourcePackage | None:
        """The .dsc beside a tree that is exactly what it unpacks to (``apt-get source``, ``dget``
        or ``dpkg-source -x`` left both there): that source package as it is, so the tree keys
        the same as the .dsc and its Debian bytes are kept.  None when there is no such .dsc,
        a file of it is missing or wrong, or the tree was changed."""
        if not dsc.is_file():
            return None
        try:
            package = source_package(dsc, what)
        except PermanentError:
            return None
        unpacked = work / ".dsc-beside"
        try:
            _dpkg_source(["-x", "--no-check", str(dsc), str(unpacked)], work, what)
            if tree_hash(unpacked) != tree_hash(tree):
                return None
        except PermanentError:
            return None
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
        for path in package.paths():
            shutil.copyfile(path, work / path.name)
        for file in package.files:
            if is_upstream_file(file.name, package.name, package.version):
                self._keep_input(work / file.name, str(dsc.parent / file.name))
        return source_package(work / dsc.name, what)

    def _orig(
        self, item: UpstreamFile, source: str, version: str, work: Path, what: str, *, files: Path | None
    ) -> Path:
        """Bring one ``orig`` entry into ``work`` under the name dpkg-source looks for (a path
        entry from the files a remote client uploaded with the tree, when it did)."""
        name = item.name
        if not is_upstream_file(name, source, version):
            suffix = next(
                (s for s in TARBALL_SUFFIXES if name.removesuffix(".asc").endswith(f".tar{s}")), None
            )
            if suffix is None:
                raise ManifestError(f"{what}: orig {name!r} is not a .tar.{{gz,bz2,xz,lzma}} (or its .asc)")
            name = f"{source}_{upstream_version(version)}.orig.tar{suffix}" + (
                ".asc" if name.endswith(".asc") else ""
            )
        dest = work / name
        if dest.exists():
            raise ManifestError(f"{what}: two 'orig' entries both give {name}")
        if item.url is not None:
            self.fetch_input(item.url, item.sha256, dest, what)
        else:
            assert item.path is not None
            local = files / Path(item.path).name if files is not None else (self.root / item.path).resolve()
            if not local.is_file():
                raise ManifestError(f"{what}: orig {item.path!r} was not found")
            shutil.copyfile(local, dest)
            if item.sha256 is not None:
                actual = file_sha256(dest)
                if actual != item.sha256:
                    raise PermanentError(
                        f"{what}: orig {item.path}: sha256 mismatch: the manifest says {item.sha256}, "
                        f"the file has {actual}"
                    )
        return dest

    # -- .dsc files and URLs -----------------------------------------------------------------

    def _signing_key(self, package: PackageSource, what: str) -> str | None:
        if package.signed_by is None:
            return None
        if package.signed_by.startswith(ARMORED_KEY_BEGIN):
            return package.signed_by
        path = (self.root / package.signed_by).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            raise ManifestError(
                f"{what}: signed_by {package.signed_by!r} is neither a key nor a file of the tree"
            )
        return path.read_text(encoding="utf-8", errors="replace")

    def _from_dsc_file(self, dsc: Path, work: Path, what: str, key: str | None) -> SourcePackage:
        if not dsc.is_file():
            raise ManifestError(f"{what}: no file {dsc.name} in {dsc.parent}")
        package = source_package(dsc, what)
        if key is not None:
            verify_dsc(dsc, key, what)
        for path in package.paths():
            shutil.copyfile(path, work / path.name)
        for file in package.files:
            if is_upstream_file(file.name, package.name, package.version):
                self._keep_input(work / file.name, str(dsc.parent / file.name))
        return source_package(work / dsc.name, what)

    def from_dsc_url(
        self, url: str, work: Path, what: str, key: str | None, dsc_sha256: str | None = None
    ) -> SourcePackage:
        """Fetch a .dsc and every file it names (``dget``), each checked and kept."""
        check_fetch_url(url, self.ctx.settings.fetch.url_policy, what)
        name = Path(urllib.parse.urlsplit(url).path).name
        if not name.endswith(".dsc"):
            raise ManifestError(f"{what}: {url} does not name a .dsc")
        dsc = work / name
        self.fetch_input(url, dsc_sha256, dsc, what)
        if key is not None:
            verify_dsc(dsc, key, what)
        package = source_package(dsc, what, check=False)
        for file in package.files:
            self.fetch_input(urllib.parse.urljoin(url, file.name), file.sha256, work / file.name, what, file)
        return source_package(dsc, what)

    # -- source + version from the farm's mirrors ---------------------------------------------

    def from_archive(self, name: str, version: str | None, work: Path, what: str) -> SourcePackage:
        """The source package ``name`` (``version``, or the newest) from the configured mirrors."""
        mirrors = self.ctx.settings.mirrors.repositories
        if not mirrors:
            raise ManifestError(f"{what}: 'source' needs a mirror configured in the farm (BUILDFARM_MIRRORS)")
        if version is not None:  # fetched before: no mirror needed, even if it has gone
            known = self._known(f"source:{name}={version}")
            if known is not None:
                sha, url = known
                try:
                    return self.from_dsc_url(url, work, what, None, sha)
                except TemporaryError:
                    for path in work.iterdir():
                        path.unlink()
        best: tuple[Version, MirrorConfig, str, str] | None = None
        for mirror in mirrors:
            for entry in _sources_entries(mirror, name, what):
                candidate = Version(str(entry["Version"]))
                if version is not None and candidate != Version(version):
                    continue
                dsc_entry = next(
                    (f for f in entry.get("Checksums-Sha256", []) if f["name"].endswith(".dsc")), None
                )
                if dsc_entry is None:
                    continue
                if best is None or candidate > best[0]:
                    url = f"{mirror.url.rstrip('/')}/{entry['Directory']}/{dsc_entry['name']}"
                    best = (candidate, mirror, url, str(dsc_entry["sha256"]))
        if best is None:
            wanted = f"{name} {version}" if version else name
            names = ", ".join(m.name for m in mirrors)
            raise PermanentError(f"{what}: no source package {wanted} in the mirrors ({names})")
        package = self.from_dsc_url(best[2], work, what, None, best[3])
        self._record(
            best[3],
            package.dsc_path.stat().st_size,
            package.dsc_name,
            f"source:{name}={package.version}",
            best[2],
        )
        return package

    # -- fetching and keeping build inputs ------------------------------------------------------

    def fetch_input(
        self, url: str, sha256: str | None, dest: Path, what: str, expected: DscFile | None = None
    ) -> None:
        """``url`` into ``dest``: from the artifact store when its checksum is known and stored,
        else downloaded, checked, stored and recorded as a build input (kept forever)."""
        store = self.ctx.store
        if sha256 is None:
            known = self._known(url)
            sha256 = known[0] if known is not None else None
            checked = False
        else:
            checked = True
        if sha256 is not None and store.has(sha256):
            store.fetch(sha256, dest)
            return
        check_fetch_url(url, self.ctx.settings.fetch.url_policy, what)
        actual = download(url, dest, what, self.ctx.settings.fetch.url_policy)
        if checked and actual != sha256:
            dest.unlink(missing_ok=True)
            source = f"the .dsc says {sha256}" if expected is not None else f"expected {sha256}"
            raise PermanentError(f"{what}: {url}: sha256 mismatch: {source}, the download has {actual}")
        if expected is not None and dest.stat().st_size != expected.size:
            raise PermanentError(
                f"{what}: {url}: size mismatch: the .dsc says {expected.size}, "
                f"the download has {dest.stat().st_size}"
            )
        ref = store.put_file(dest)
        self._record(ref.sha256, ref.size, dest.name, url, url)

    def _keep_input(self, path: Path, origin: str) -> None:
        """A local upstream file is a build input too: stored and kept like a downloaded one."""
        ref = self.ctx.store.put_file(path)
        self._record(ref.sha256, ref.size, path.name, origin, "")

    def _known(self, origin: str) -> tuple[str, str] | None:
        with self.ctx.db.session() as session:
            row = session.execute(
                select(BuildInput.sha256, BuildInput.url)
                .where(BuildInput.origin == origin)
                .order_by(BuildInput.id.desc())
                .limit(1)
            ).first()
        return None if row is None else (row[0], row[1])

    def _record(self, sha256: str, size: int, name: str, origin: str, url: str) -> None:
        with self.ctx.db.session() as session:
            exists = session.scalar(
                select(BuildInput.id).where(BuildInput.sha256 == sha256, BuildInput.origin == origin).limit(1)
            )
            if exists is None:
                session.add(
                    BuildInput(
                        sha256=sha256,
                        size=size,
                        name=name,
                        origin=origin[:2000],
                        url=url[:2000],
                        stored_at=utcnow(),
                    )
                )


def download(url: str, dest: Path, what: str, policy: UrlPolicy) -> str:
    """Stream ``url`` into ``dest``; its sha256.  Unreachable or a 5xx: temporary; a 4xx:
    permanent.  Redirects are followed by hand (at most MAX_REDIRECTS), each target passing the
    URL policy, so a public URL cannot redirect the farm to its own services."""
    digest = hashlib.sha256()
    size = 0
    shown = redact_url(url)
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False) as http:
            for _hop in range(MAX_REDIRECTS + 1):
                with http.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urllib.parse.urljoin(url, response.headers["location"])
                        check_fetch_url(url, policy, what)
                        continue
                    if response.status_code >= 500 or response.status_code == 429:
                        raise TemporaryError(f"{what}: {shown} answered HTTP {response.status_code}", 60.0)
                    if response.status_code != 200:
                        raise PermanentError(f"{what}: {shown} answered HTTP {response.status_code}")
                    with dest.open("wb") as out:
                        for chunk in response.iter_bytes(_CHUNK):
                            size += len(chunk)
                            if size > MAX_DOWNLOAD_BYTES:
                                raise PermanentError(
                                    f"{what}: {shown} is larger than {MAX_DOWNLOAD_BYTES} bytes"
                                )
                            digest.update(chunk)
                            out.write(chunk)
                    return digest.hexdigest()
    except httpx.HTTPError as exc:
        dest.unlink(missing_ok=True)
        raise TemporaryError(f"{what}: {shown} cannot be fetched: {exc or type(exc).__name__}", 60.0) from exc
    raise PermanentError(f"{what}: {shown} redirects more than {MAX_REDIRECTS} times")


def verify_dsc(dsc: Path, key: str, what: str) -> None:
    """The .dsc's inline signature must verify against ``key`` alone (gpgv); else one line naming it."""
    with tempfile.TemporaryDirectory(prefix="buildfarm-dsc-gpgv-") as tmp:
        keyring = Path(tmp) / "signed-by.gpg"
        try:
            dearmor = subprocess.run(
                ["gpg", "--batch", "--homedir", tmp, "--dearmor", "--output", str(keyring)],
                input=key.encode(),
                capture_output=True,
                timeout=GPG_TIMEOUT_SECONDS,
                check=False,
            )
            if dearmor.returncode != 0:
                raise ManifestError(f"{what}: signed_by is not an armored OpenPGP public key")
            result = subprocess.run(
                ["gpgv", "--keyring", str(keyring), str(dsc)],
                capture_output=True,
                timeout=GPG_TIMEOUT_SECONDS,
                check=False,
            )
            listed = subprocess.run(
                ["gpg", "--batch", "--homedir", tmp, "--with-colons", "--show-keys", str(keyring)],
                capture_output=True,
                timeout=GPG_TIMEOUT_SECONDS,
                check=False,
            )
        except FileNotFoundError as exc:
            raise PermanentError(f"{exc.filename} is not installed (Debian packages: gnupg gpgv)") from exc
        except subprocess.TimeoutExpired as exc:
            raise TemporaryError(f"{what}: gpgv took over {GPG_TIMEOUT_SECONDS:.0f} s") from exc
    if result.returncode != 0:
        fingerprints = [
            line.split(":")[9]
            for line in listed.stdout.decode(errors="replace").splitlines()
            if line.startswith("fpr:")
        ]
        said = [
            line.removeprefix("gpgv:").strip() for line in result.stderr.decode(errors="replace").splitlines()
        ]
        reason = next((line for line in reversed(said) if line), f"exit status {result.returncode}")
        key_name = fingerprints[0] if fingerprints else "the signed_by key"
        raise PermanentError(f"{what}: {dsc.name} is not signed by key {key_name}: {reason}")


def dpkg_source_env() -> dict[str, str]:
    """The environment dpkg-source runs in: no DEB_/DPKG_ settings of the caller, C locale, UTC."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEB_", "DPKG_"))}
    return env | {"LC_ALL": "C.UTF-8", "TZ": "UTC"}


def warm_up() -> None:
    """Start the process's preloaded Perls that pack trees (:data:`PACK_THREADS`: one a packing
    thread), as the API starts: its first submit's packs find them loaded, instead of waiting
    ~0.1 s for one to start; then ask ``dpkg-source --version`` (every tree key holds it: a
    fresh farm's first submit read its trees only after that ~0.1 s run).  The API is ready
    ~0.1-0.15 s later for it (the Perls load meanwhile, beside the version's run)."""
    shared_forks(dpkg_source_env()).start(PACK_THREADS)
    dpkg_source_version()


def _dpkg_source(args: list[str], cwd: Path, what: str, forks: DpkgSourceForks | None = None) -> None:
    """``dpkg-source <args>`` in ``cwd`` (forked from a preloaded Perl of ``forks`` when given);
    a failure is one line naming ``what``."""
    try:
        done = forks.run(args, cwd, DPKG_SOURCE_TIMEOUT_SECONDS) if forks is not None else None
        if done is None:
            result = subprocess.run(
                ["dpkg-source", *args],
                cwd=cwd,
                env=dpkg_source_env(),
                capture_output=True,
                text=True,
                timeout=DPKG_SOURCE_TIMEOUT_SECONDS,
                check=False,
            )
            done = result.returncode, result.stderr + result.stdout
    except FileNotFoundError as exc:
        raise PermanentError("dpkg-source is not installed (Debian package: dpkg-dev)") from exc
    except (subprocess.TimeoutExpired, TimeoutError) as exc:
        raise TemporaryError(
            f"{what}: dpkg-source {args[0]} took over {DPKG_SOURCE_TIMEOUT_SECONDS} s"
        ) from exc
    returncode, output = done
    if returncode != 0:
        lines = output.strip().splitlines()
        errors = [line for line in lines if "error:" in line]
        last = (errors or lines or ["(no message)"])[-1].strip()
        raise PermanentError(f"{what}: dpkg-source {args[0]} failed: {last}")


def _sources_entries(mirror: MirrorConfig, name: str, what: str) -> list[Sources]:
    """The paragraphs of source package ``name`` in the mirror's Sources indexes (each checked
    against the Release file's SHA256)."""
    out: list[Sources] = []
    with httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=True) as http:
        base = f"{mirror.url.rstrip('/')}/dists/{mirror.distribution}"
        release = read_release(http, mirror, base)
        listed = {entry["name"]: entry for entry in release.get("SHA256", [])}
        for component in mirror.components:
            for suffix, unpack in _INDEX_UNPACK.items():
                entry = listed.get(f"{component}/source/Sources{suffix}")
                if entry is None:
                    continue
                url = f"{base}/{component}/source/Sources{suffix}"
                try:
                    response = http.get(url)
                except httpx.HTTPError as exc:
                    raise TemporaryError(
                        f"{what}: mirror {mirror.name!r}: {url} cannot be fetched: {exc}", 60.0
                    ) from exc
                if response.status_code != 200:
                    raise TemporaryError(
                        f"{what}: mirror {mirror.name!r}: {url} answered HTTP {response.status_code}", 60.0
                    )
                if hashlib.sha256(response.content).hexdigest() != entry["sha256"]:
                    raise PermanentError(
                        f"{what}: mirror {mirror.name!r}: {url} does not match its SHA256 in Release"
                    )
                text = unpack(response.content)
                out.extend(
                    s
                    for s in Sources.iter_paragraphs(text.decode("utf-8", "replace"), use_apt_pkg=False)
                    if s.get("Package") == name
                )
                break
    return out


def dsc_fields(package: SourcePackage) -> dict[str, str]:
    """The .dsc's fields the planner reads (Source, Version, Binary, Build-Depends*)."""
    dsc = read_dsc(package.dsc_path, package.dsc_name)
    return {str(k): str(v) for k, v in dsc.items() if not isinstance(v, list)}
