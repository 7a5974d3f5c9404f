"""StarlingX package directories (``stx``: meta_data.yaml, patches/, deb_folder/) built through
the farm with the host runner: the version carries StarlingX's revision suffix, the upstream
tarball comes from ``dl_path`` on a localhost HTTP server, a bad field is refused by name.

Cost: the build ~4 s (dpkg-source + dpkg-buildpackage of a tiny C program); the refusals are
parse-only, milliseconds each.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.model.debsource import file_sha256
from buildfarm.model.errors import ManifestError, PermanentError
from buildfarm.model.manifest import load_manifest
from buildfarm.model.starlingx import parse_meta_data
from buildfarm.state.models import Step

from farmkit import drain, make_test_context
from httpkit import serving

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
LOCAL_FETCH = {"fetch_allow_schemes": ["https", "http"], "fetch_allow_hosts": ["127.0.0.1"]}
"""The allow-list an admin gives a farm whose upstream server is on loopback."""


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, f"sqlite:///{tmp_path}/state.db", **LOCAL_FETCH)
    yield context
    context.db.dispose()


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The greet-quilt upstream tarball on a localhost HTTP server: (url, sha256)."""
    www = tmp_path / "www"
    www.mkdir()
    shutil.copyfile(EXAMPLES / "greet-quilt_1.0.orig.tar.gz", www / "greet-1.0.tar.gz")
    with serving(www) as server:
        yield f"{server.url}/greet-1.0.tar.gz", file_sha256(www / "greet-1.0.tar.gz")


def _stx_layout(root: Path, url: str, sha256: str) -> Path:
    """A StarlingX-style tree: ``greet/debian/`` holding meta_data.yaml, deb_folder/ (debian/
    without its patches) and patches/ (the greeting patch), committed twice to git."""
    stx = root / "greet" / "debian"
    deb_folder = stx / "deb_folder"
    shutil.copytree(EXAMPLES / "greet-quilt" / "debian", deb_folder)
    (stx / "patches").mkdir()
    shutil.move(deb_folder / "patches" / "01-greeting.patch", stx / "patches" / "01-greeting.patch")
    shutil.rmtree(deb_folder / "patches")
    (stx / "patches" / "series").write_text("# the greeting\n01-greeting.patch\n")
    (stx / "meta_data.yaml").write_text(
        "---\n"
        "debname: greet-quilt\n"
        "debver: 1.0-1\n"
        "dl_path:\n"
        "  name: greet-1.0.tar.gz\n"
        f"  url: {url}\n"
        f"  sha256sum: {sha256}\n"
        "revision:\n"
        "  dist: $STX_DIST\n"
        "  PKG_GITREVCOUNT: true\n"
        "  stx_patch: 1\n"
    )
    (root / "buildfarm.yaml").write_text(
        "project: proj\nbranch: main\nkind: nightly\npackages:\n  - stx: greet/debian\n"
    )
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "greet")
    (stx / "deb_folder" / "README.Debian").write_text("A StarlingX package.\n")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "readme")
    (root / "unrelated").write_text("not in the package directory\n")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "elsewhere")
    return root / "buildfarm.yaml"


def test_stx_package_builds_with_its_revision_suffix_and_patches(
    ctx: FarmContext, tmp_path: Path, upstream: tuple[str, str]
) -> None:
    manifest = _stx_layout(tmp_path / "src", *upstream)
    build_id = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    drain(ctx)
    view = control.show_build(ctx, build_id)
    assert view.state == "succeeded", view
    # two commits touch greet/debian (the third does not), nothing uncommitted, stx_patch 1
    assert view.steps[0].version == "1.0-1.stx.3"
    deb = next(
        o
        for o in view.steps[0].outputs
        if o["filename"].startswith("greet-quilt_") and o["filename"].endswith(".deb")
    )
    assert deb["filename"] == "greet-quilt_1.0-1.stx.3_amd64.deb"
    ctx.store.fetch(deb["sha256"], tmp_path / "p.deb")
    subprocess.run(["dpkg-deb", "-x", str(tmp_path / "p.deb"), str(tmp_path / "root")], check=True)
    said = subprocess.run(
        [str(tmp_path / "root/usr/bin/greet-quilt")], check=True, capture_output=True, text=True
    ).stdout
    assert "patched by debian/patches" in said  # patches/ went into the quilt series

    # an uncommitted change in the package directory counts, as StarlingX counts it
    (manifest.parent / "greet" / "debian" / "meta_data.yaml").write_text(
        (manifest.parent / "greet" / "debian" / "meta_data.yaml")
        .read_text()
        .replace("stx_patch: 1", "stx_patch: 5")
    )
    again = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    assert control.show_build(ctx, again).steps[0].version == "1.0-1.stx.8"


def test_stx_orig_tarball_is_repacked_deterministically(
    ctx: FarmContext, tmp_path: Path, upstream: tuple[str, str]
) -> None:
    """Two submits of the same directory give the same source package (one input key); the
    second takes the upstream tarball from the store: the upstream has gone meanwhile."""
    manifest = _stx_layout(tmp_path / "src", *upstream)
    first = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    shutil.rmtree(tmp_path / "www")  # the server now answers 404 for it
    second = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    keys = [control.show_build(ctx, b).steps[0].input_key for b in (first, second)]
    assert keys[0] == keys[1]


def test_stx_without_git_history_refuses_gitrevcount_in_one_line(
    ctx: FarmContext, tmp_path: Path, upstream: tuple[str, str]
) -> None:
    manifest = _stx_layout(tmp_path / "src", *upstream)
    shutil.rmtree(manifest.parent / ".git")
    with pytest.raises(ManifestError, match=r"revision.PKG_GITREVCOUNT counts git commits of greet/debian"):
        submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("debver: 1.0-1\ndl_hook: fetch.sh\n", r"dl_hook: runs a script"),
        ("debver: 1.0-1\nbuild_type: rt\n", r"build_type is not a field the farm supports"),
        ("debname: x\n", r"debver is required"),
        ("debver: 1.0-1\nrevision:\n  FILES_GITREVCOUNT: [abc1]\n", r"revision.FILES_GITREVCOUNT"),
        ("debver: 1.0-1\nrevision:\n  stx_patch: one\n", r"revision.stx_patch must be a whole number"),
        ("debver: 1.0-1\nrevision:\n  GITREVCOUNT: {SRC_DIR: x}\n", r"GITREVCOUNT needs BASE_SRCREV"),
        ("debver: 1.0-1\nrevision:\n  dist: $MY_DIST\n", r"variable \$MY_DIST is not known"),
        ("debver: 1.0-1\ndl_path: {name: a.tar.gz, url: 'http://x/a.tar.gz'}\n", r"dl_path needs sha256sum"),
        ("debver: 1.0-1\ndl_path: {name: a.tar.gz, url: 'http://x/a', sha256sum: 12}\n", r"64 hex digits"),
        ("debver: 1.0-1\nsrc_path: ${MY_REPO}/src\n", r"src_path: .* uses a variable"),
        ("debver: 1.0-1\nrevision:\n  SRC_GITREVCOUNT: {SRC_BASE_SRCREV: abcd}\n", r"there is no src_path"),
    ],
)
def test_meta_data_mistakes_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_meta_data(text.encode(), "meta_data.yaml")


def test_meta_data_suffix_follows_starlingx() -> None:
    meta = parse_meta_data(b"debver: '2:1.2-3@'\nrevision:\n  dist: $STX_DIST\n  stx_patch: 4\n", "m")
    assert meta.debver == "2:1.2-3"
    assert meta.revision is not None and meta.revision.suffix(0) == ".stx.4"
    bare = parse_meta_data(b"debver: 1.0\nrevision: {}\n", "m")
    assert bare.revision is not None and bare.revision.suffix(2) == ".2"


def test_manifest_stx_entry_checks(tmp_path: Path) -> None:
    (tmp_path / "buildfarm.yaml").write_text(
        "project: p\nbranch: main\nkind: nightly\npackages:\n  - stx: nowhere/debian\n"
    )
    with pytest.raises(ManifestError, match=r"packages\[0\].stx: 'nowhere/debian' has no meta_data.yaml"):
        load_manifest(tmp_path / "buildfarm.yaml")
    (tmp_path / "buildfarm.yaml").write_text(
        "project: p\nbranch: main\nkind: nightly\npackages:\n  - stx: a\n    path: b\n"
    )
    with pytest.raises(ManifestError, match=r"exactly one of 'path', 'git', 'dsc', 'source' or 'stx'"):
        load_manifest(tmp_path / "buildfarm.yaml")


def test_orig_repack_has_the_tree_name_as_top(tmp_path: Path) -> None:
    from buildfarm.engine.stxsource import _pack_orig

    tree = tmp_path / "greet-1.0"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "a.c").write_text("int a;\n")
    _pack_orig(tree, tmp_path / "one.tar.gz")
    _pack_orig(tree, tmp_path / "two.tar.gz")
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "one.tar.gz") as tar:
        assert tar.getnames() == ["greet-1.0", "greet-1.0/src", "greet-1.0/src/a.c"]


def test_stx_kernel_type_marks_are_refused_by_name(
    ctx: FarmContext, tmp_path: Path, upstream: tuple[str, str]
) -> None:
    manifest = _stx_layout(tmp_path / "src", *upstream)
    (manifest.parent / "greet" / "debian" / "deb_folder" / "control").write_text(
        "Source: greet@KERNEL_TYPE@\n"
    )
    with pytest.raises(ManifestError, match=r"greet/debian/deb_folder/control uses @KERNEL_TYPE@"):
        submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")


def test_stx_archive_dsc_with_deb_patches(
    ctx: FarmContext, tmp_path: Path, upstream: tuple[str, str]
) -> None:
    """``archive``: the .dsc is fetched (checked against ``dsc_sha256``), unpacked, deb_patches/
    applied to its debian/, and the version suffixed; no git counts, so no checkout needed."""
    url, _ = upstream
    served = tmp_path / "www"  # the upstream fixture's directory
    shutil.copytree(EXAMPLES / "greet-quilt", tmp_path / "pkg" / "greet-quilt")
    shutil.copyfile(
        EXAMPLES / "greet-quilt_1.0.orig.tar.gz", tmp_path / "pkg" / "greet-quilt_1.0.orig.tar.gz"
    )
    subprocess.run(
        ["dpkg-source", "-b", "greet-quilt"], cwd=tmp_path / "pkg", check=True, capture_output=True
    )
    for path in (tmp_path / "pkg").iterdir():
        if path.is_file():
            shutil.copyfile(path, served / path.name)
    stx = tmp_path / "src" / "greet" / "debian"
    (stx / "deb_patches").mkdir(parents=True)
    (stx / "deb_patches" / "series").write_text("0001-readme.patch\n")
    (stx / "deb_patches" / "0001-readme.patch").write_text(
        "--- a/debian/README.Debian\n+++ b/debian/README.Debian\n@@ -0,0 +1 @@\n+Patched by deb_patches.\n"
    )
    base = url.rsplit("/", 1)[0]
    (stx / "meta_data.yaml").write_text(
        "debname: greet-quilt\ndebver: 1.0-1\n"
        f"archive: {base}\n"
        f"dsc_sha256: {file_sha256(served / 'greet-quilt_1.0-1.dsc')}\n"
        "revision:\n  dist: $STX_DIST\n  stx_patch: 2\n"
    )
    manifest = tmp_path / "src" / "buildfarm.yaml"
    manifest.write_text("project: proj\nbranch: main\nkind: nightly\npackages:\n  - stx: greet/debian\n")
    build_id = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    view = control.show_build(ctx, build_id)
    assert view.steps[0].version == "1.0-1.stx.2"
    with ctx.db.session() as session:
        sha = session.scalars(select(Step.source_sha256).where(Step.build_id == build_id)).one()
    ctx.store.fetch(sha, tmp_path / "given.tar.gz")
    with tarfile.open(tmp_path / "given.tar.gz") as tar:
        tar.extractall(tmp_path / "given", filter="data")
    subprocess.run(
        ["dpkg-source", "-x", "greet-quilt_1.0-1.stx.2.dsc", "out"],
        cwd=tmp_path / "given",
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "given/out/debian/README.Debian").read_text() == "Patched by deb_patches.\n"
    # the upstream tarball is the archive's own: dpkg-source kept it as it is
    assert file_sha256(tmp_path / "given/greet-quilt_1.0.orig.tar.gz") == file_sha256(
        EXAMPLES / "greet-quilt_1.0.orig.tar.gz"
    )


def test_stx_md5sum_mismatch_gives_both_sums(
    ctx: FarmContext, tmp_path: Path, upstream: tuple[str, str]
) -> None:
    url, _ = upstream
    manifest = _stx_layout(tmp_path / "src", url, "0" * 64)
    meta = manifest.parent / "greet" / "debian" / "meta_data.yaml"
    meta.write_text(meta.read_text().replace(f"sha256sum: {'0' * 64}", f"md5sum: {'a' * 32}"))
    with pytest.raises(
        PermanentError,
        match=rf"md5sum mismatch: meta_data.yaml says {'a' * 32}, the download has [0-9a-f]{{32}}",
    ):
        submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")


def test_dl_path_tarball_loses_only_a_single_top_directory(tmp_path: Path) -> None:
    """debrepack's ``--strip-components 1`` when the tarball has one top directory, else as is."""
    from buildfarm.engine.stxsource import _unpack_stripped

    def tarball(name: str, members: dict[str, bytes]) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tar:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    _unpack_stripped(
        tarball("one.tar.gz", {"./greet-1.0/a.c": b"a", "./greet-1.0/.hidden": b"h"}), tmp_path / "one", "t"
    )
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [".hidden", "a.c"]
    _unpack_stripped(tarball("flat.tar.gz", {"a.c": b"a", ".hidden": b"h"}), tmp_path / "flat", "t")
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == [".hidden", "a.c"]


def test_remote_cli_refuses_stx_entries_before_sending_anything(tmp_path: Path) -> None:
    """Commit counts need the checkout's history, which the remote CLI does not send."""
    import httpx

    from buildfarm_cli.httpclient import HttpClient

    (tmp_path / "greet" / "debian").mkdir(parents=True)
    (tmp_path / "greet" / "debian" / "meta_data.yaml").write_text("debver: 1.0-1\n")
    manifest = tmp_path / "buildfarm.yaml"
    manifest.write_text("project: p\nbranch: main\nkind: nightly\npackages:\n  - stx: greet/debian\n")
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    client = HttpClient("http://farm.invalid", "token", transport=httpx.MockTransport(answer))
    with pytest.raises(PermanentError, match=r"packages\[0\] \(stx greet/debian\): a StarlingX directory"):
        client.submit(manifest, None)
    assert sent == []


def test_dl_files_topdir_repack_keeps_the_compression_its_name_says(tmp_path: Path) -> None:
    from buildfarm.engine.stxsource import _pack_orig, _retop

    source = tmp_path / "src" / "x-1"
    source.mkdir(parents=True)
    (source / "a").write_text("a\n")
    _pack_orig(source, tmp_path / "extra.tar.xz")
    _retop(tmp_path / "extra.tar.xz", "vendor", tmp_path / "scratch", "t")
    with tarfile.open(tmp_path / "extra.tar.xz", "r:xz") as tar:
        assert tar.getnames() == ["vendor", "vendor/a"]


def test_stx_src_path_counts_its_commits_since_the_base(ctx: FarmContext, tmp_path: Path) -> None:
    """``src_path`` (relative to the package directory) is the upstream tree, packed as the orig
    tarball; SRC_GITREVCOUNT counts its commits after SRC_BASE_SRCREV, PKG_GITREVCOUNT those of
    the directory holding meta_data.yaml.  Resolve only."""
    root = tmp_path / "src"
    stx = root / "greet" / "debian"
    shutil.copytree(EXAMPLES / "greet-quilt" / "debian", stx / "deb_folder")
    shutil.rmtree(stx / "deb_folder" / "patches")
    (stx / "deb_folder" / "source" / "format").write_text("3.0 (quilt)\n")
    with tarfile.open(EXAMPLES / "greet-quilt_1.0.orig.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    shutil.copytree(tmp_path / "unpacked" / "greet-quilt-1.0", root / "greet" / "src")
    (root / "buildfarm.yaml").write_text(
        "project: proj\nbranch: main\nkind: nightly\npackages:\n  - stx: greet/debian\n"
    )
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "base")
    base = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()
    for n in range(3):
        (root / "greet" / "src" / f"NEWS.{n}").write_text(f"{n}\n")
        _git(root, "add", ".")
        _git(root, "commit", "-q", "-m", f"src {n}")
    (stx / "meta_data.yaml").write_text(
        "debname: greet-quilt\ndebver: 1.0-1\nsrc_path: src\n"
        "revision:\n  dist: $STX_DIST\n  PKG_GITREVCOUNT: true\n"
        f"  SRC_GITREVCOUNT:\n    SRC_BASE_SRCREV: {base}\n"
    )  # uncommitted: one more for the package directory
    build_id = submit_build(ctx, load_manifest(root / "buildfarm.yaml"), root, "alice")
    # package directory: 1 commit + 1 uncommitted file; src: 3 commits after the base
    assert control.show_build(ctx, build_id).steps[0].version == "1.0-1.stx.5"
