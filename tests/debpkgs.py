"""Tiny real Debian source packages made on the fly for tests (no debhelper: ~0.3 s a build).

``build_depends`` names go into Build-Depends as ``dpkg-dev | <name>``: the planner sees the
edge (any alternative counts) while dpkg-checkbuilddeps on the host is satisfied by dpkg-dev,
so chains of packages build in the fast host mode too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from buildfarm.backends.base import Fetch, PackageFile

CHANGELOG = """{name} ({version}) unstable; urgency=medium

  * Test package.

 -- buildfarm tests <tests@buildfarm.invalid>  Mon, 01 Jan 2024 00:00:00 +0000
"""

RULES = """#!/usr/bin/make -f
build build-arch build-indep:
\t{build}
clean:
\trm -rf debian/tmp debian/files
binary binary-arch binary-indep: build
\trm -rf debian/tmp
\tmkdir -p debian/tmp/DEBIAN debian/tmp/usr/share/doc/{name}
\tcp payload.txt debian/tmp/usr/share/doc/{name}/payload.txt
\tdpkg-gencontrol -p{name} -Pdebian/tmp
\tdpkg-deb --root-owner-group --build debian/tmp ..
"""


def make_package(
    root: Path,
    name: str,
    *,
    version: str = "1.0",
    build_depends: tuple[str, ...] = (),
    payload: str = "",
    build: str = "true",
) -> Path:
    """Write source package ``name`` under ``root/name``; ``build`` is the shell of its build step."""
    directory = root / name
    debian = directory / "debian"
    (debian / "source").mkdir(parents=True, exist_ok=True)
    depends = "".join(f", dpkg-dev | {dep}" for dep in build_depends)
    (debian / "control").write_text(
        f"Source: {name}\nSection: misc\nPriority: optional\nMaintainer: tests <tests@buildfarm.invalid>\n"
        f"Build-Depends: dpkg-dev{depends}\nRules-Requires-Root: no\n\n"
        f"Package: {name}\nArchitecture: all\nDescription: test package {name}\n test package\n"
    )
    (debian / "changelog").write_text(CHANGELOG.format(name=name, version=version))
    (debian / "source" / "format").write_text("3.0 (native)\n")
    rules = debian / "rules"
    rules.write_text(RULES.format(name=name, build=build))
    rules.chmod(0o755)
    (directory / "payload.txt").write_text(payload or f"payload of {name} {version}\n")
    return directory


def write_manifest(
    root: Path, names: list[str], *, project: str = "proj", branch: str = "main", kind: str = "nightly"
) -> Path:
    manifest = root / "buildfarm.yaml"
    packages = "".join(f"  - path: {n}\n" for n in names)
    manifest.write_text(f"project: {project}\nbranch: {branch}\nkind: {kind}\npackages:\n{packages}")
    return manifest


def build_deb(
    workdir: Path, name: str, version: str, *, architecture: str = "all", payload: str = "", source: str = ""
) -> PackageFile:
    """A real binary .deb made with dpkg-deb (no source package): for repository tests."""
    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb not found: install the Debian package 'dpkg' (make deps does)", pytrace=False)
    tree = workdir / f"{name}-{version}-{architecture}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {architecture}\n"
        + (f"Source: {source}\n" if source else "")
        + ("Multi-Arch: same\n" if architecture != "all" else "")  # co-installable across architectures
        + f"Maintainer: Farm Tests <tests@example.org>\nDescription: buildfarm test package {name}\n"
    )
    (tree / "usr" / "share" / name).mkdir(parents=True)
    (tree / "usr" / "share" / name / "payload").write_text(payload or f"{name} {version} {architecture}\n")
    deb = workdir / f"{name}_{version}_{architecture}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True, capture_output=True
    )
    data = deb.read_bytes()
    return PackageFile(deb.name, hashlib.sha256(data).hexdigest(), len(data), deb)


def fetch_from(packages: Iterable[PackageFile]) -> Fetch:
    """An artifact store's ``fetch`` that serves these packages' files (what ``stage`` is given)."""
    paths = {package.sha256: package.path for package in packages}
    return lambda sha256, dest: shutil.copyfile(paths[sha256], dest) and None


def multiarch_debs(workdir: Path, source: str, version: str, arches: tuple[str, ...]) -> list[PackageFile]:
    """What one source package built for several architectures gives: ``lib<source>`` for each
    of ``arches`` (Multi-Arch: same, different bytes) and ``<source>-doc`` (Architecture: all)."""
    debs = [build_deb(workdir, f"lib{source}", version, architecture=a, source=source) for a in arches]
    return [*debs, build_deb(workdir, f"{source}-doc", version, source=source)]


DebFactory = Callable[[str, str], PackageFile]
"""``make(name, version)`` -> a .deb (see :func:`unique_debs`)."""


def unique_debs(workdir: Path) -> DebFactory:
    """Packages whose bytes no other test made (a time salt in version and a ~40 KB payload), so
    what a shared server stores or frees for them is theirs alone."""
    salt = f"{time.time_ns()}"
    return lambda name, version: build_deb(workdir, name, f"{version}+{salt}", payload=salt * 2000)


def build_source_package(
    workdir: Path, name: str, version: str, *, payload: str = "", standards_version: bool = True
) -> list[PackageFile]:
    """A real ``3.0 (quilt)`` source package (``dpkg-source -b``: the .dsc, its upstream tarball and
    debian tarball) and the one ``Architecture: all`` binary it stands for (made with dpkg-deb, as
    :func:`build_deb`; ``version`` is ``<upstream>-<revision>``): what a build publishes, ~0.1 s."""
    if shutil.which("dpkg-source") is None:
        pytest.fail(
            "dpkg-source not found: install the Debian package 'dpkg-dev' (make deps does)", pytrace=False
        )
    upstream = version.split(":", 1)[-1].rsplit("-", 1)[0]
    base = workdir / f"src-{name}-{version}".replace(":", "_")
    tree = base / f"{name}-{upstream}"
    tree.mkdir(parents=True)
    (tree / "README").write_text(payload or f"upstream of {name} {version}\n")
    subprocess.run(
        ["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-czf",
         str(base / f"{name}_{upstream}.orig.tar.gz"), "-C", str(base), tree.name],
        check=True,
    )  # fmt: skip
    debian = tree / "debian"
    (debian / "source").mkdir(parents=True)
    (debian / "control").write_text(
        f"Source: {name}\nSection: misc\nPriority: optional\nMaintainer: tests <tests@buildfarm.invalid>\n"
        + ("Standards-Version: 4.6.2\n" if standards_version else "")
        + "Build-Depends: dpkg-dev\n\n"
        f"Package: {name}\nArchitecture: all\nDescription: test package {name}\n test package\n"
    )
    (debian / "changelog").write_text(CHANGELOG.format(name=name, version=version))
    (debian / "source" / "format").write_text("3.0 (quilt)\n")
    (debian / "rules").write_text("#!/usr/bin/make -f\n%:\n\ttrue\n")
    (debian / "rules").chmod(0o755)
    subprocess.run(
        ["dpkg-source", "-b", tree.name],
        cwd=base,
        check=True,
        capture_output=True,
        env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
    )
    shutil.rmtree(tree)
    files = []
    for path in sorted(base.iterdir()):
        data = path.read_bytes()
        files.append(PackageFile(path.name, hashlib.sha256(data).hexdigest(), len(data), path))
    return [*files, build_deb(base, name, version, payload=payload)]


def tree_listing(root: Path, since_ns: int) -> dict[str, tuple[object, ...]]:
    """Every entry's kind, permissions, contents or target, and modification time (only when it
    came from the tarball: what the unpack itself writes has a fresh one)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            meta = path.lstat()
            mtime = None if meta.st_mtime_ns >= since_ns else meta.st_mtime_ns
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(meta.st_mode):
                out[rel] = ("link", os.readlink(path), mtime)
            elif stat.S_ISDIR(meta.st_mode):
                out[rel] = ("dir", stat.S_IMODE(meta.st_mode), mtime)
            else:
                out[rel] = ("file", stat.S_IMODE(meta.st_mode), path.read_bytes(), mtime)
    top = root.lstat()
    out["."] = ("dir", stat.S_IMODE(top.st_mode), top.st_mtime_ns)
    return out
