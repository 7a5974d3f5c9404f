"""Real packages from Debian's archive, built through a local farm, one build, once with each
runner that builds on the node: sbuild, and unshare (the builder pods' command, `make demo`'s).

Six small source packages, chosen for few Build-Depends, each named a different way:

==================  ===================  ==================================================
package             entry kind           covers
==================  ===================  ==================================================
rsakeyfind 1.0-8    ``path`` (unpacked)  3.0 (quilt), one upstream tarball + its ``.asc``
                                         beside the tree, debian/patches; a C++ program apt
                                         installs and runs
mescc-tools 1.4.0   ``dsc`` (http URL)   3.0 (quilt) with a component tarball (orig-M2libc)
mbw 1.2.2-1.1       ``dsc`` (local)      1.0 with .diff.gz
memstat 1.1         ``source`` + version 1.0 native, from the farm's mirror (Sources index)
dh-autoreconf 20    ``source``           3.0 (native), Architecture: all
minizip 1.1-8+d12u1 ``path``             3.0 (quilt); Build-Depends on dh-autoreconf of the
                                         same build, so it waits for it (a build-time edge)
==================  ===================  ==================================================

Downloads: tests/debsources.py (``apt-get source --download-only``, cached in
``~/.cache/buildfarm/debian-sources/<name>_<version>/`` so the suite fetches them once).  The
farm's "mirror" for ``source:`` is a small archive on localhost made from those files with
``apt-ftparchive`` (Sources for ``source:``, an empty Packages index for the builds).

Cost: per runner one farm (2 nodes) and six builds: ~1 minute each on 2 cores, idle.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.local.aptclient import AptClient
from buildfarm.model.debsource import source_package
from buildfarm.model.settings import load_settings
from buildfarm.runners.process import BUILDER_UMASK
from buildfarm.runners.sbuild import ensure_base_tarball
from buildfarm.runners.sourcepkg import unpack_native

from debpkgs import tree_listing
from debsources import PACKAGES, debian_source
from httpkit import Served
from localfarmkit import Farm

pytestmark = pytest.mark.sbuild


def _unpack(dsc: Path, into: Path) -> Path:
    """``dpkg-source -x`` the package beside its upstream files, as a maintainer's checkout."""
    into.mkdir(parents=True, exist_ok=True)
    package = source_package(dsc, dsc.name)
    for path in package.paths():
        shutil.copyfile(path, into / path.name)
    tree = into / package.name
    subprocess.run(
        ["dpkg-source", "-x", "--no-check", dsc.name, package.name], cwd=into, check=True, capture_output=True
    )
    for path in package.paths():
        if ".orig" not in path.name:
            (into / path.name).unlink()  # only the upstream tarballs stay beside the tree
    return tree


def _mirror(www: Path, names: list[str], distribution: str) -> None:
    """A tiny archive: pool/ with the packages' files, a Sources index, an empty Packages."""
    pool = www / "pool" / "main"
    pool.mkdir(parents=True)
    for name in names:
        for path in source_package(debian_source(name, PACKAGES[name]), name).paths():
            shutil.copyfile(path, pool / path.name)
    dists = www / "dists" / distribution / "main"
    (dists / "source").mkdir(parents=True)
    (dists / "binary-amd64").mkdir(parents=True)
    sources = subprocess.run(
        ["apt-ftparchive", "sources", "pool"], cwd=www, check=True, capture_output=True
    ).stdout
    (dists / "source" / "Sources.gz").write_bytes(gzip.compress(sources, mtime=0))
    (dists / "binary-amd64" / "Packages").write_bytes(b"")
    (dists / "binary-amd64" / "Packages.gz").write_bytes(gzip.compress(b"", mtime=0))
    release = subprocess.run(
        ["apt-ftparchive", "-o", f"APT::FTPArchive::Release::Suite={distribution}",
         "-o", f"APT::FTPArchive::Release::Codename={distribution}",
         "-o", "APT::FTPArchive::Release::Components=main",
         "-o", "APT::FTPArchive::Release::Architectures=amd64 source", "release", "."],
        cwd=www / "dists" / distribution, check=True, capture_output=True,
    ).stdout  # fmt: skip
    (www / "dists" / distribution / "Release").write_bytes(release)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Served]]:
    for name, version in PACKAGES.items():
        debian_source(name, version)
    www = tmp_path_factory.mktemp("debian-www")
    _mirror(
        www,
        ["mescc-tools", "memstat", "dh-autoreconf"],
        load_settings(state_dir=www / "x").buildenv.distribution,
    )
    server = Served(www)
    yield www, server
    server.stop()


@pytest.fixture(scope="module", params=["sbuild", "unshare"])
def debian_farm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, archive: tuple[Path, Served]
) -> Iterator[Farm]:
    settings = load_settings(state_dir=tmp_path_factory.mktemp("unused"))
    ensure_base_tarball(settings.buildenv.tarball, settings.buildenv.distribution, settings.buildenv.mirror)
    farm = Farm(tmp_path_factory.mktemp("debian-farm") / "state")
    mirror = {"name": "debsrc", "url": archive[1].url, "distribution": settings.buildenv.distribution}
    farm.env["BUILDFARM_MIRRORS"] = json.dumps([mirror])
    farm.env |= {"BUILDFARM_FETCH_ALLOW_SCHEMES": "https,http", "BUILDFARM_FETCH_ALLOW_HOSTS": "127.0.0.1"}
    farm.cli("start", "--runner", request.param, "--nodes", "2", timeout=300)
    yield farm
    farm.cli("stop", check=False)


def test_six_debian_packages_build_publish_and_install(
    debian_farm: Farm, archive: tuple[Path, Served], tmp_path: Path
) -> None:
    _www, server = archive
    src = tmp_path / "src"
    _unpack(debian_source("rsakeyfind", PACKAGES["rsakeyfind"]), src / "rsakeyfind")
    _unpack(debian_source("minizip", PACKAGES["minizip"]), src / "minizip")
    mbw = debian_source("mbw", PACKAGES["mbw"])
    shutil.copytree(mbw.parent, src / "mbw")
    manifest = src / "buildfarm.yaml"
    manifest.write_text(
        "project: debian\nbranch: main\nkind: nightly\npackages:\n"
        "  - path: rsakeyfind/rsakeyfind\n"
        f"  - dsc: {server.url}/pool/main/mescc-tools_1.4.0-1.dsc\n"
        f"  - dsc: mbw/{mbw.name}\n"
        "  - source: memstat\n    version: '1.1'\n"
        "  - source: dh-autoreconf\n"
        "  - path: minizip/minizip\n"
    )
    submitted = debian_farm.cli("--output", "json", "build", "submit", str(manifest), "--wait", timeout=1300)
    view = json.loads(submitted.stdout)
    steps = {s["name"]: s for s in view["steps"]}
    assert view["state"] == "succeeded", {n: (s["state"], s.get("error")) for n, s in steps.items()}
    assert set(steps) == set(PACKAGES)
    assert steps["minizip"]["depends_on"] == ["dh-autoreconf"]
    assert any(o["filename"] == "dh-autoreconf_20_all.deb" for o in steps["dh-autoreconf"]["outputs"])

    lines = debian_farm.cli("repo", "sources", "debian", "main").stdout.strip().splitlines()
    assert lines[1].startswith("deb-src ")
    key = debian_farm.cli("repo", "key").stdout
    apt = AptClient(tmp_path / "apt", "\n".join(lines), key)
    apt.update()
    # apt-get source gives back exactly the source package the farm was given (dget'd from Debian)
    fetched = apt.source("mescc-tools")
    original = source_package(debian_source("mescc-tools", PACKAGES["mescc-tools"]), "mescc-tools")
    assert [p.name for p in fetched] == sorted(p.name for p in original.paths())
    for path in fetched:
        assert path.read_bytes() == (original.directory / path.name).read_bytes()

    # apt installs the built program (into a private root, the host's libraries satisfy its
    # Depends) and it runs
    root = tmp_path / "root"
    root.mkdir()
    admin = tmp_path / "dpkg"
    (admin / "updates").mkdir(parents=True)
    (admin / "info").mkdir()
    shutil.copyfile("/var/lib/dpkg/status", admin / "status")
    (tmp_path / "apt" / "state" / "dpkg-status").write_bytes(Path("/var/lib/dpkg/status").read_bytes())
    apt._apt_get(
        "install", "-y", "--no-install-recommends",
        "-o", f"DPkg::Options::=--instdir={root}", "-o", f"DPkg::Options::=--admindir={admin}",
        "-o", "DPkg::Options::=--force-script-chrootless", "-o", "DPkg::Options::=--force-not-root",
        "rsakeyfind",
    )  # fmt: skip
    ran = subprocess.run(
        [str(root / "usr" / "bin" / "rsakeyfind")], capture_output=True, text=True, check=False
    )
    assert "usage" in (ran.stdout + ran.stderr).lower(), ran


@pytest.mark.parametrize("name", ["memstat", "dh-autoreconf"])
def test_debians_native_packages_unpack_in_process_as_dpkg_source_does(tmp_path: Path, name: str) -> None:
    """The host runner's in-process unpack of a native package (1.0 native, 3.0 (native)), on
    Debian's own packages: the same tree as ``dpkg-source -x`` (paths, modes, contents, targets,
    the tarball's times); here, not with the runner's unit tests, as this module fetches them."""
    dsc = debian_source(name, PACKAGES[name])
    since = time.time_ns()
    subprocess.run(
        ["dpkg-source", "-x", str(dsc), str(tmp_path / "by-dpkg")],
        check=True,
        capture_output=True,
        env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin", "TZ": "UTC"},
        umask=BUILDER_UMASK,  # as the host runner runs it
    )
    assert unpack_native(dsc, tmp_path / "ours") is True
    assert tree_listing(tmp_path / "ours", since) == tree_listing(tmp_path / "by-dpkg", since)
