"""git-buildpackage repositories (``git`` + ``layout: gbp``) built through the farm with the host
runner: the upstream tarball is made by ``gbp export-orig``, from the pristine-tar branch when
there is one (byte-identical to the upstream's), else from the upstream tag; a repository with
neither is one line naming what was tried.  Served by ``git daemon`` on loopback.

Cost: each build ~4 s (gbp + dpkg-source + dpkg-buildpackage of a tiny C program); the
repository is made per test in ~1 s (pristine-tar commit included).
"""

from __future__ import annotations

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
from buildfarm.state.models import Step

from farmkit import drain, make_test_context
from gitkit import LOOPBACK_GIT, GitServer, git

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
ORIG = EXAMPLES / "greet-quilt_1.0.orig.tar.gz"

pytestmark = pytest.mark.skipif(shutil.which("gbp") is None, reason="git-buildpackage is not installed")


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, f"sqlite:///{tmp_path}/state.db", **LOOPBACK_GIT)
    yield context
    context.db.dispose()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[GitServer]:
    base = tmp_path / "git"
    base.mkdir()
    with GitServer(base) as server:
        yield server


def _gbp_repo(repo: Path, *, tag: bool = True, pristine: bool = True) -> Path:
    """greet-quilt in gbp layout: branch upstream (tagged upstream/1.0), a pristine-tar branch
    holding the upstream tarball, branch master = upstream + debian/ (with a quilt patch)."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "upstream")
    with tarfile.open(ORIG) as tar:
        tar.extractall(repo.parent / "unpacked", filter="data")
    for path in (repo.parent / "unpacked" / "greet-quilt-1.0").iterdir():
        shutil.copy2(path, repo / path.name)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "upstream 1.0")
    if tag:
        git(repo, "tag", "upstream/1.0")
    if pristine:
        shutil.copyfile(ORIG, repo.parent / "greet-quilt_1.0.orig.tar.gz")
        subprocess.run(
            ["pristine-tar", "commit", str(repo.parent / "greet-quilt_1.0.orig.tar.gz"), "upstream"],
            cwd=repo,
            check=True,
            capture_output=True,
            timeout=60,
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": str(repo.parent),
                "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@example.org",
                "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.org",
            },
        )
    git(repo, "checkout", "-q", "-b", "master")
    shutil.copytree(EXAMPLES / "greet-quilt" / "debian", repo / "debian")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "packaging 1.0-1")
    return repo


def _manifest(root: Path, url: str) -> Path:
    root.mkdir(exist_ok=True)
    manifest = root / "buildfarm.yaml"
    manifest.write_text(
        "project: proj\nbranch: main\nkind: nightly\npackages:\n"
        f"  - git: {url}\n    ref: master\n    layout: gbp\n"
    )
    return manifest


def _given_orig(ctx: FarmContext, build_id: int, dest: Path) -> Path:
    with ctx.db.session() as session:
        sha = session.scalars(select(Step.source_sha256).where(Step.build_id == build_id)).one()
    ctx.store.fetch(sha, dest.with_suffix(".tar.gz"))
    with tarfile.open(dest.with_suffix(".tar.gz")) as tar:
        tar.extractall(dest, filter="data")
    return dest / "greet-quilt_1.0.orig.tar.gz"


def _build(ctx: FarmContext, manifest: Path) -> int:
    build_id = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    drain(ctx)
    return build_id


def test_gbp_with_pristine_tar_builds_from_the_upstream_bytes(
    ctx: FarmContext, tmp_path: Path, served: GitServer
) -> None:
    repo = _gbp_repo(served.base / "greet.git")
    build_id = _build(ctx, _manifest(tmp_path / "m", served.url(repo)))
    view = control.show_build(ctx, build_id)
    assert view.state == "succeeded", view
    assert view.steps[0].version == "1.0-1"
    # pristine-tar gives back the upstream's own tarball, byte for byte
    assert file_sha256(_given_orig(ctx, build_id, tmp_path / "given")) == file_sha256(ORIG)


def test_gbp_without_pristine_tar_makes_the_tarball_from_the_upstream_tag(
    ctx: FarmContext, tmp_path: Path, served: GitServer
) -> None:
    repo = _gbp_repo(served.base / "greet.git", pristine=False)
    manifest = _manifest(tmp_path / "m", served.url(repo))
    build_id = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    with tarfile.open(_given_orig(ctx, build_id, tmp_path / "given")) as tar:
        assert sorted(tar.getnames())[-2:] == ["greet-quilt-1.0/Makefile", "greet-quilt-1.0/greet.c"]


def test_gbp_without_tag_or_pristine_tar_says_what_it_tried(
    ctx: FarmContext, tmp_path: Path, served: GitServer
) -> None:
    repo = _gbp_repo(served.base / "greet.git", tag=False, pristine=False)
    manifest = _manifest(tmp_path / "m", served.url(repo))
    with pytest.raises(PermanentError) as caught:
        submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    message = str(caught.value)
    assert "\n" not in message
    assert "upstream tag 'upstream/1.0'" in message and "branch 'pristine-tar'" in message


def test_gbp_conf_upstream_tag_is_the_one_fetched(
    ctx: FarmContext, tmp_path: Path, served: GitServer
) -> None:
    """debian/gbp.conf's upstream-tag (here ``v%(version)s``) names the tag gbp and the farm use."""
    repo = _gbp_repo(served.base / "greet.git", tag=False, pristine=False)
    git(repo, "tag", "v1.0", "upstream")
    (repo / "debian" / "gbp.conf").write_text("[DEFAULT]\nupstream-tag = v%(version)s\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "gbp.conf")
    manifest = _manifest(tmp_path / "m", served.url(repo))
    build_id = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    assert _given_orig(ctx, build_id, tmp_path / "given").is_file()


def test_gbp_and_path_of_the_same_source_key_the_same(
    ctx: FarmContext, tmp_path: Path, served: GitServer
) -> None:
    """pristine-tar gives the upstream's bytes, so the gbp repository and the same tree with its
    tarball beside it are one source package: one input key, built once."""
    repo = _gbp_repo(served.base / "greet.git")
    by_git = _manifest(tmp_path / "m", served.url(repo))
    local = tmp_path / "local"
    local.mkdir()
    shutil.copytree(EXAMPLES / "greet-quilt", local / "greet-quilt")
    shutil.copyfile(ORIG, local / "greet-quilt_1.0.orig.tar.gz")
    (local / "buildfarm.yaml").write_text(
        "project: proj\nbranch: main\nkind: nightly\npackages:\n  - path: greet-quilt\n"
    )
    keys = [
        control.show_build(ctx, submit_build(ctx, load_manifest(m), m.parent, "alice")).steps[0].input_key
        for m in (by_git, local / "buildfarm.yaml")
    ]
    assert keys[0] == keys[1]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("  - path: x\n    layout: gbp\n", r"'layout: gbp' goes with 'git'"),
        (
            "  - git: https://example.org/r.git\n    ref: main\n    layout: gbp\n    subdir: pkg\n",
            r"takes no 'subdir'",
        ),
        ("  - git: https://example.org/r.git\n    ref: main\n    layout: cvs\n", r"layout"),
    ],
)
def test_gbp_manifest_mistakes(tmp_path: Path, entry: str, message: str) -> None:
    (tmp_path / "buildfarm.yaml").write_text(f"project: p\nbranch: main\nkind: nightly\npackages:\n{entry}")
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path / "buildfarm.yaml")


def test_real_debian_package_imported_with_gbp_gives_the_archive_tarball(
    ctx: FarmContext, tmp_path: Path, served: GitServer
) -> None:
    """rsakeyfind 1:1.0-8 from Debian's archive (3.0 (quilt), patches, a signed upstream tarball),
    imported with ``gbp import-dsc --pristine-tar``: the farm's gbp entry gives back the
    archive's own upstream tarball and the same name and version.  Resolve only (~3 s)."""
    from debsources import PACKAGES, debian_source

    dsc = debian_source("rsakeyfind", PACKAGES["rsakeyfind"])
    repo = served.base / "rsakeyfind.git"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    subprocess.run(
        ["gbp", "import-dsc", "--pristine-tar", str(dsc), str(repo)],
        cwd=served.base,
        check=True,
        capture_output=True,
        timeout=120,
        env=env,
    )
    manifest = _manifest(tmp_path / "m", served.url(repo))
    build_id = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    view = control.show_build(ctx, build_id)
    assert (view.steps[0].name, view.steps[0].version) == ("rsakeyfind", PACKAGES["rsakeyfind"])
    with ctx.db.session() as session:
        sha = session.scalars(select(Step.source_sha256).where(Step.build_id == build_id)).one()
    ctx.store.fetch(sha, tmp_path / "given.tar.gz")
    with tarfile.open(tmp_path / "given.tar.gz") as tar:
        tar.extractall(tmp_path / "given", filter="data")
    orig = "rsakeyfind_1.0.orig.tar.gz"
    assert file_sha256(tmp_path / "given" / orig) == file_sha256(dsc.parent / orig)


def test_gbp_pristine_tar_without_upstream_tag_uses_the_upstream_branch_tree(
    ctx: FarmContext, tmp_path: Path, served: GitServer
) -> None:
    """No upstream tag: pristine-tar still rebuilds the tarball from the tree it recorded, which
    the upstream branch (gbp's ``upstream-branch``, fetched one commit deep) carries."""
    repo = _gbp_repo(served.base / "greet.git", tag=False)
    manifest = _manifest(tmp_path / "m", served.url(repo))
    build_id = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    assert file_sha256(_given_orig(ctx, build_id, tmp_path / "given")) == file_sha256(ORIG)
