"""A StarlingX package directory (``stx``) repacked into one Debian source package.

The steps and their order are StarlingX's ``debrepack`` (see :mod:`buildfarm.model.starlingx`
for the fields):

1. the source tree ``<debname>-<upstream>``: ``dl_path``'s tarball unpacked without its top
   directory, or a copy of ``src_path``, or the ``.dsc`` of ``archive`` (or of the farm's
   mirrors) unpacked with ``dpkg-source -x``;
2. for a tarball or ``src_path``: ``src_files``, ``dl_files`` and ``files/`` copied in, then the
   tree (debian/ of upstream included) packed as ``<debname>_<upstream>.orig.tar.gz``;
3. ``deb_folder/`` laid over debian/ (its ``patches/series`` applied with ``patch -p1`` unless
   the format is 3.0 (quilt), where dpkg-source applies it); ``deb_patches/series`` applied to
   the tree with ``patch -p1`` (not for ``src_path``, as debrepack);
4. ``patches/series``: for 3.0 (quilt) added to debian/patches (dpkg-source applies them), for
   1.0 and native applied with ``patch -p1``;
5. a changelog entry with the version ``<changelog version><dist>.<N>`` (``revision``);
6. ``dpkg-source -b``.

The repacked tarball is deterministic (sorted members, fixed owners and times, gzip without a
timestamp): the same directory gives the same source package and input key.

Revision counts need git history: the package directory must lie in a git checkout the farm
can read (a ``path`` manifest on the farm's disk).  When it does not, a ``*GITREVCOUNT`` is
refused with one line (use ``stx_patch`` for a fixed number); nothing is guessed.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from debian.changelog import Changelog

from buildfarm.model.debsource import SourcePackage, source_package, tree_format, upstream_version
from buildfarm.model.errors import ManifestError, PermanentError, TemporaryError
from buildfarm.model.starlingx import Download, MetaData, RevCount, parse_meta_data

if TYPE_CHECKING:
    from buildfarm.engine.srcpkg import SourceResolver

PATCH_TIMEOUT_SECONDS = 120
GIT_TIMEOUT_SECONDS = 60
REVISION_IGNORE = (".gitreview",)
"""Entries debrepack leaves out of commit counts."""
BUILD_TYPE_MARK = b"@KERNEL_TYPE@"
CHANGELOG_NOTE = "StarlingX package repacked by buildfarm"


class StxResolver:
    """One ``stx`` entry of a submit, repacked under ``work``."""

    def __init__(self, resolver: SourceResolver, stx: str, work: Path, what: str) -> None:
        self.resolver = resolver
        self.root = resolver.root.resolve()
        self.stxdir = (self.root / stx).resolve()
        self.pkgdir = self.stxdir.parent
        self.work = work
        self.what = what
        if not self.stxdir.is_relative_to(self.root) or not (self.stxdir / "meta_data.yaml").is_file():
            raise ManifestError(f"{what}: no meta_data.yaml in {stx!r}")
        self.where = f"{what}: meta_data.yaml"
        self.meta: MetaData = parse_meta_data((self.stxdir / "meta_data.yaml").read_bytes(), self.where)
        self._refuse_build_types()

    def _refuse_build_types(self) -> None:
        """StarlingX replaces ``@KERNEL_TYPE@`` per build type (std, rt); the farm has none."""
        for directory, _, names in os.walk(self.stxdir):
            for name in names:
                path = Path(directory) / name
                if path.is_file() and not path.is_symlink() and BUILD_TYPE_MARK in path.read_bytes():
                    shown = path.relative_to(self.root).as_posix()
                    raise ManifestError(
                        f"{self.what}: {shown} uses {BUILD_TYPE_MARK.decode()}: build types are not supported"
                    )

    def resolve(self) -> SourcePackage:
        from buildfarm.engine.srcpkg import _dpkg_source  # srcpkg imports this module

        meta = self.meta
        debname = meta.debname or self.pkgdir.name
        upstream = upstream_version(meta.debver)
        suffix = self._revision_suffix()
        tree = self.work / f"{debname}-{upstream}"
        if meta.dl_path is not None or meta.src_path is not None:
            if meta.dl_path is not None:
                tarball = self._download(meta.dl_path, self.work / ".dl")
                _unpack_stripped(tarball, tree, self.what)
            else:
                assert meta.src_path is not None
                source = self._inside(self.pkgdir / meta.src_path, "src_path", directory=True)
                shutil.copytree(source, tree, symlinks=True, ignore=shutil.ignore_patterns(".git"))
            self._copy_custom_files(tree)
            _pack_orig(tree, self.work / f"{debname}_{upstream}.orig.tar.gz")
            self._update_deb_folder(tree)
            if meta.dl_path is not None:
                self._apply_series(self.stxdir / "deb_patches", tree)
        else:
            dsc = self._fetch_dsc(debname)
            shutil.rmtree(tree, ignore_errors=True)
            _dpkg_source(["-x", dsc.dsc_name, tree.name], self.work, self.what)
            self._apply_series(self.stxdir / "deb_patches", tree)
        self._apply_src_patches(tree)
        version = self._add_changelog_entry(tree, suffix)
        _dpkg_source(["-b", tree.name], self.work, self.what)
        name = Changelog((tree / "debian" / "changelog").read_text(encoding="utf-8")).package
        shutil.rmtree(tree)
        return source_package(self.work / f"{name}_{version.split(':', 1)[-1]}.dsc", self.what)

    # -- inputs ------------------------------------------------------------------------------

    def _inside(self, path: Path, field: str, *, directory: bool = False) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise ManifestError(f"{self.where}: {field}: {path} escapes the manifest's tree")
        if not (resolved.is_dir() if directory else resolved.exists()):
            raise ManifestError(f"{self.where}: {field}: no {'directory' if directory else 'file'} {path}")
        return resolved

    def _download(self, item: Download, into: Path) -> Path:
        """Fetch (or take from the store) one download, checked against its sha256sum or md5sum."""
        into.mkdir(exist_ok=True)
        dest = into / item.name
        self.resolver.fetch_input(item.url, item.sha256, dest, self.what)
        if item.sha256 is None and item.md5 is not None:
            actual = hashlib.md5(dest.read_bytes(), usedforsecurity=False).hexdigest()
            if actual != item.md5:
                raise PermanentError(
                    f"{self.where}: {item.url}: md5sum mismatch: meta_data.yaml says {item.md5}, "
                    f"the download has {actual}"
                )
        return dest

    def _fetch_dsc(self, debname: str) -> SourcePackage:
        meta = self.meta
        noepoch = meta.debver.split(":", 1)[-1]
        if meta.archive is not None:
            url = f"{meta.archive.rstrip('/')}/{debname}_{noepoch}.dsc"
            return self.resolver.from_dsc_url(url, self.work, self.what, None, meta.dsc_sha256)
        return self.resolver.from_archive(debname, meta.debver, self.work, self.what)

    def _copy_custom_files(self, tree: Path) -> None:
        for rel in self.meta.src_files:
            source = self._inside(self.pkgdir / rel, "src_files")
            if source.is_dir():
                shutil.copytree(source, tree / source.name, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copyfile(source, tree / source.name)
        for item in self.meta.dl_files:
            downloaded = self._download(item, self.work / ".dl")
            if item.topdir is not None:
                _retop(downloaded, item.topdir, self.work / ".dl-files", self.what)
            shutil.copyfile(downloaded, tree / item.name)
        files = self.stxdir / "files"
        if files.is_dir():
            for directory, _, names in sorted(os.walk(files)):
                for name in sorted(names):  # debrepack copies them flat into the tree
                    source = self._inside(Path(directory) / name, "files")
                    shutil.copyfile(source, tree / name)

    # -- debian/ and patches ---------------------------------------------------------------------

    def _update_deb_folder(self, tree: Path) -> None:
        deb_folder = self.stxdir / "deb_folder"
        if not deb_folder.is_dir():
            return
        self._inside(deb_folder, "deb_folder", directory=True)
        shutil.copytree(deb_folder, tree / "debian", symlinks=True, dirs_exist_ok=True)
        if (deb_folder / "patches" / "series").is_file() and tree_format(tree) != "3.0 (quilt)":
            self._apply_series(deb_folder / "patches", tree)

    def _apply_src_patches(self, tree: Path) -> None:
        series = self.stxdir / "patches" / "series"
        if not series.is_file():
            return
        if tree_format(tree) != "3.0 (quilt)":
            self._apply_series(self.stxdir / "patches", tree)
            return
        patches = tree / "debian" / "patches"
        patches.mkdir(exist_ok=True)
        with (patches / "series").open("a", encoding="utf-8") as out:
            for name in self._series(self.stxdir / "patches"):
                dest = patches / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self._inside(self.stxdir / "patches" / name, "patches"), dest)
                out.write(name + "\n")

    def _series(self, directory: Path) -> list[str]:
        names = []
        for line in (directory / "series").read_text(encoding="utf-8").splitlines():
            name = line.split("#", 1)[0].strip().split(" ", 1)[0]
            if not name:
                continue
            if name.startswith("/") or ".." in Path(name).parts:
                raise ManifestError(f"{self.where}: {directory.name}/series names {name!r}, outside it")
            names.append(name)
        return names

    def _apply_series(self, directory: Path, tree: Path) -> None:
        if not (directory / "series").is_file():
            return
        for name in self._series(directory):
            patch = self._inside(directory / name, f"{directory.name}/{name}")
            try:
                result = subprocess.run(
                    ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-i", str(patch)],
                    cwd=tree,
                    capture_output=True,
                    text=True,
                    timeout=PATCH_TIMEOUT_SECONDS,
                    check=False,
                    env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                )
            except FileNotFoundError as exc:
                raise PermanentError("patch is not installed (Debian package: patch)") from exc
            except subprocess.TimeoutExpired as exc:
                raise TemporaryError(
                    f"{self.what}: patch {name} took over {PATCH_TIMEOUT_SECONDS} s"
                ) from exc
            if result.returncode != 0:
                said = [line for line in result.stdout.splitlines() if line.strip()]
                raise PermanentError(
                    f"{self.what}: {directory.name}/{name} does not apply: {(said or ['(no message)'])[-1]}"
                )

    def _add_changelog_entry(self, tree: Path, suffix: str) -> str:
        """A new changelog entry with the StarlingX version; its author, date and distribution
        are the previous entry's, so the same directory always gives the same bytes."""
        path = tree / "debian" / "changelog"
        if not path.is_file():
            raise ManifestError(
                f"{self.what}: the repacked tree has no debian/changelog (deb_folder/ gives none)"
            )
        changelog = Changelog(path.read_text(encoding="utf-8"))
        current = str(changelog.version)
        if upstream_version(current) != upstream_version(self.meta.debver):
            raise ManifestError(
                f"{self.where}: debver {self.meta.debver} but debian/changelog says {current} "
                "(their upstream versions differ)"
            )
        if not suffix:
            return current
        version = current + suffix
        top = changelog[0]
        changelog.new_block(
            package=changelog.package,
            version=version,
            distributions=top.distributions,
            urgency=top.urgency,
            author=top.author,
            date=top.date,
            changes=["", f"  * {CHANGELOG_NOTE}.", ""],
        )
        path.write_text(str(changelog), encoding="utf-8")
        return version

    # -- revision ----------------------------------------------------------------------------------

    def _revision_suffix(self) -> str:
        revision = self.meta.revision
        if revision is None:
            return ""
        commits = 0
        for count in revision.counts:
            if count.directory is None:
                directory = self.stxdir
            elif count.directory == "<src_path>":
                assert self.meta.src_path is not None
                directory = self._inside(self.pkgdir / self.meta.src_path, "src_path", directory=True)
            else:
                directory = self._inside(self.pkgdir / count.directory, count.field, directory=True)
            commits += self._git_count(directory, count)
        return revision.suffix(commits)

    def _git_count(self, directory: Path, count: RevCount) -> int:
        """debrepack's count: commits touching ``directory`` (since ``base``), plus its
        uncommitted changes."""
        ignored = [
            f":!{entry.name}"
            for entry in directory.iterdir()
            if any(p in entry.name for p in REVISION_IGNORE)
        ]
        inside = self._git(["rev-parse", "--is-inside-work-tree"], directory, count, check=False)
        if inside != "true":
            raise ManifestError(
                f"{self.where}: {count.field} counts git commits of {directory.relative_to(self.root)}, "
                "which is not in a git checkout the farm can read (a tree without its history); "
                "build from the checkout, or give revision.stx_patch instead"
            )
        span = "HEAD" if count.base is None else f"{count.base}..HEAD"
        commits = self._git(
            ["rev-list", "--count", "--end-of-options", span, "--", ".", *ignored], directory, count
        )
        dirty = self._git(["status", "--porcelain", "--", "."], directory, count)
        return int(commits) + len([line for line in dirty.splitlines() if line.strip()])

    def _git(self, args: list[str], cwd: Path, count: RevCount, *, check: bool = True) -> str:
        try:
            result = subprocess.run(
                ["git", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", *args],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_SECONDS,
                check=False,
                stdin=subprocess.DEVNULL,
                env={
                    "PATH": "/usr/bin:/bin",
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_CONFIG_GLOBAL": "/dev/null",
                    "GIT_TERMINAL_PROMPT": "0",
                    "LC_ALL": "C",
                },
            )
        except FileNotFoundError as exc:
            raise PermanentError("git is not installed (Debian package: git)") from exc
        except subprocess.TimeoutExpired as exc:
            raise TemporaryError(f"{self.what}: git {args[0]} took over {GIT_TIMEOUT_SECONDS} s") from exc
        if check and result.returncode != 0:
            said = (result.stderr.strip().splitlines() or ["(no message)"])[0]
            raise ManifestError(f"{self.where}: {count.field}: git {args[0]} failed: {said}")
        return result.stdout.strip()


def _tar_members(tar: tarfile.TarFile, what: str) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        if not (member.isfile() or member.isdir() or member.issym()):
            raise PermanentError(f"{what}: tarball member {member.name} is not a file, directory or symlink")
    return members


def _unpack_stripped(tarball: Path, dest: Path, what: str) -> None:
    """Unpack ``tarball`` into ``dest``; without its top directory when it has exactly one
    (debrepack's ``--strip-components 1``)."""
    try:
        with tarfile.open(tarball) as tar:
            members = _tar_members(tar, what)
            names = [m.name.removeprefix("./").rstrip("/") for m in members]
            tops = {name.split("/", 1)[0] for name in names if name and name != "."}
            single = len(tops) == 1 and any(
                "/" in name or m.isdir() for name, m in zip(names, members, strict=True)
            )
            dest.mkdir(parents=True)
            if single:
                top = next(iter(tops))
                for member, rel in zip(members, names, strict=True):
                    if rel in (top, "", "."):
                        continue
                    member.name = rel.split("/", 1)[1]
                    tar.extract(member, dest, filter="data")
            else:
                tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise PermanentError(f"{what}: cannot unpack {tarball.name}: {exc}") from exc


def _pack_orig(tree: Path, dest: Path) -> None:
    """The deterministic tarball of ``tree`` (compressed as ``dest``'s name says: xz, bz2, else
    gzip without a timestamp), its members under the tree's name."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        entries = [tree]
        for directory, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            entries += [Path(directory) / n for n in sorted(dirnames + filenames)]
        for path in entries:
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(tree.parent)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    if dest.name.endswith((".tar.xz", ".txz")):
        dest.write_bytes(lzma.compress(raw.getvalue()))
    elif dest.name.endswith((".tar.bz2", ".tbz2")):
        dest.write_bytes(bz2.compress(raw.getvalue()))
    else:
        with dest.open("wb") as out, gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
            gz.write(raw.getvalue())


def _retop(tarball: Path, topdir: str, scratch: Path, what: str) -> None:
    """debrepack's ``topdir`` of a dl_files tarball: repacked with ``topdir`` as its top directory."""
    unpacked = scratch / topdir
    shutil.rmtree(scratch, ignore_errors=True)
    _unpack_stripped(tarball, unpacked, what)
    _pack_orig(unpacked, tarball)
