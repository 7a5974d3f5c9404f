"""Every manifest mistake is one line naming the file, the field and what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from buildfarm.model.errors import ManifestError
from buildfarm.model.manifest import BuildKind, load_manifest

CONTROL = "Source: pkg\n\nPackage: pkg\nArchitecture: all\n"


def _tree(tmp_path: Path, text: str, packages: tuple[str, ...] = ("pkg",)) -> Path:
    for name in packages:
        (tmp_path / name / "debian").mkdir(parents=True)
        (tmp_path / name / "debian" / "control").write_text(CONTROL)
    manifest = tmp_path / "buildfarm.yaml"
    manifest.write_text(text)
    return manifest


def test_example_manifest_loads() -> None:
    manifest = load_manifest(Path(__file__).parents[3] / "examples" / "buildfarm.yaml")
    assert manifest.project == "examples"
    assert manifest.kind is BuildKind.NIGHTLY
    assert len(manifest.packages) == 6


def test_git_package(tmp_path: Path) -> None:
    text = "project: p\nbranch: r/stx.9.0\nkind: release\npackages:\n  - git: https://x/y.git\n    ref: v1\n"
    manifest = load_manifest(_tree(tmp_path, text))
    assert manifest.packages[0].describe() == "https://x/y.git@v1"
    assert manifest.branch == "r/stx.9.0"


def _assert_one_line_error(manifest: Path, expected: str) -> None:
    """Loading ``manifest`` fails with one line that names the file and contains ``expected``."""
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    message = str(info.value)
    assert message.startswith(str(manifest) + ": ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "project: p\nbranch: main\nkind: nightly\npackages: [{path: pkg}]\ncolour: red\n",
            "colour: unknown field",
        ),
        (
            "project: p\nbranch: main\nkind: nightly\npackages: [{path: pkg, flavour: x}]\n",
            "packages[0].flavour: unknown field",
        ),
        ("project: p\nbranch: main\npackages: [{path: pkg}]\n", "kind: required field is missing"),
        ("project: p\nbranch: main\nkind: weekly\npackages: [{path: pkg}]\n", "kind: Input should be"),
        ("project: p\nbranch: ../x\nkind: nightly\npackages: [{path: pkg}]\n", "branch: invalid branch name"),
        (
            "project: a/b\nbranch: main\nkind: nightly\npackages: [{path: pkg}]\n",
            "project: invalid project name",
        ),
        ("project: p\nbranch: main\nkind: nightly\npackages: []\n", "give at least one package"),
        (
            "project: p\nbranch: main\nkind: nightly\npackages: [{path: ../pkg}]\n",
            "packages[0].path: path '../pkg' escapes the manifest's tree",
        ),
        ("project: p\nbranch: main\nkind: nightly\npackages: [{path: /etc}]\n", "must be relative"),
        (
            "project: p\nbranch: main\nkind: nightly\npackages: [{path: nope}]\n",
            "packages[0].path: directory 'nope' does not exist",
        ),
        (
            "project: p\nbranch: main\nkind: nightly\npackages: [{path: pkg}, {path: pkg}]\n",
            "packages[1]: duplicate of packages[0] (pkg)",
        ),
        ("project: p\nbranch: main\nkind: nightly\npackages: [{git: https://x}]\n", "'git' needs a 'ref'"),
        (
            "project: p\nbranch: main\nkind: nightly\npackages: [{path: pkg, git: https://x, ref: y}]\n",
            "give exactly one of 'path', 'git', 'dsc', 'source' or 'stx'",
        ),
        (
            "project: p\nbranch: main\nkind: nightly\narchitectures: [amd64, ARM]\npackages: [{path: pkg}]\n",
            "architectures: 'ARM' is not a Debian architecture",
        ),
        (
            "project: p\nbranch: main\nkind: nightly\narchitectures: [all]\npackages: [{path: pkg}]\n",
            "architectures: 'all' is not a Debian architecture",
        ),
        (
            "project: p\nbranch: main\nkind: nightly\narchitectures: [mips, mips]\npackages: [{path: pkg}]\n",
            "architectures: an architecture is listed twice",
        ),
        (
            "project: p\nbranch: main\nkind: nightly\narchitectures: []\npackages: [{path: pkg}]\n",
            "architectures: list at least one architecture",
        ),
        ("project: [p\n", "line 2: not valid YAML"),
        ("- just a list\n", "must be a mapping"),
    ],
)
def test_bad_manifests(tmp_path: Path, text: str, expected: str) -> None:
    _assert_one_line_error(_tree(tmp_path, text), expected)


GIT_HEAD = "project: p\nbranch: main\nkind: nightly\npackages:\n  - "


@pytest.mark.parametrize(
    ("package", "expected"),
    [
        # issue 11: each of these ran a command or read the host as the farm
        (
            "{git: '--upload-pack=touch /tmp/x;false', ref: /srv/repo}",
            "packages[0].git: '--upload-pack=touch /tmp/x;false' starts with '-'",
        ),
        ("{git: 'https://x/y.git', ref: '--upload-pack=touch /tmp/x'}", "packages[0].ref: invalid git ref"),
        ("{git: 'https://x/y.git', ref: v1, subdir: '--x'}", "packages[0].subdir: subdir '--x' starts with"),
        ("{git: 'file:///srv/repo', ref: v1}", "packages[0].git: 'file:///srv/repo' is not a network URL"),
        ("{git: /srv/repo, ref: v1}", "packages[0].git: '/srv/repo' is not a network URL"),
        ("{git: 'ext::sh', ref: v1}", "is not a network URL"),
        ("{git: 'git@example.org:team/r.git', ref: v1}", "is not a network URL"),
        ("{git: 'https://x/y.git', ref: 'a:b'}", "packages[0].ref: invalid git ref 'a:b'"),
        ("{path: '-pkg'}", "packages[0].path: path '-pkg' starts with '-'"),
    ],
)
def test_hostile_git_sources_are_refused(tmp_path: Path, package: str, expected: str) -> None:
    _assert_one_line_error(_tree(tmp_path, GIT_HEAD + package + "\n"), expected)


def test_image_contexts_follow_the_same_rules(tmp_path: Path) -> None:
    image = "images: [{name: a, git: '--upload-pack=touch /tmp/x', ref: v1}]\n"
    _assert_one_line_error(_image_tree(tmp_path, image), "images[0].git: '--upload-pack=touch /tmp/x' starts")
    (tmp_path / "again").mkdir()
    image = "images: [{name: a, path: ctx, dockerfile: '-f'}]\n"
    _assert_one_line_error(_image_tree(tmp_path / "again", image), "dockerfile '-f' starts with '-'")


def test_credentials_in_a_git_url_are_not_shown(tmp_path: Path) -> None:
    text = GIT_HEAD + "{git: 'https://bob:s3cret@x/y.git', ref: v1}\n"
    assert load_manifest(_tree(tmp_path, text)).packages[0].describe() == "https://***@x/y.git@v1"


def test_missing_debian_control(tmp_path: Path) -> None:
    manifest = _tree(tmp_path, "project: p\nbranch: main\nkind: nightly\npackages: [{path: bare}]\n")
    (tmp_path / "bare").mkdir()
    with pytest.raises(ManifestError, match=re.escape("'bare' has no debian/control")):
        load_manifest(manifest)


def test_symlink_escaping_tree_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "debian").mkdir(parents=True)
    (outside / "debian" / "control").write_text(CONTROL)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link").symlink_to(outside)
    manifest = tree / "m.yaml"
    manifest.write_text("project: p\nbranch: main\nkind: nightly\npackages: [{path: link}]\n")
    with pytest.raises(ManifestError, match="escapes the manifest's tree"):
        load_manifest(manifest)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such manifest file"):
        load_manifest(tmp_path / "absent.yaml")


IMAGE_HEAD = "project: p\nbranch: main\nkind: nightly\npackages: [{path: pkg}]\n"


def _image_tree(tmp_path: Path, images: str) -> Path:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\n")
    return _tree(tmp_path, IMAGE_HEAD + images)


def test_images_parse_with_defaults(tmp_path: Path) -> None:
    manifest = load_manifest(
        _image_tree(
            tmp_path,
            "images:\n  - name: web.app-1\n    path: ctx\n    depends: [pkg]\n    build_args: {N: 3, S: x}\n"
            "  - name: other\n    git: https://x/y.git\n    ref: main\n    subdir: docker\n"
            "    dockerfile: build/Dockerfile.prod\n    builder: sysbox\n",
        )
    )
    first, second = manifest.images
    assert (first.name, first.dockerfile, first.builder.value) == ("web.app-1", "Dockerfile", "kaniko")
    assert first.build_args == {"N": "3", "S": "x"} and first.depends == ["pkg"]
    assert second.describe() == "https://x/y.git@main:docker" and second.builder.value == "sysbox"


def test_images_only_manifest(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\n")
    manifest_path = tmp_path / "m.yaml"
    manifest_path.write_text("project: p\nbranch: main\nkind: nightly\nimages: [{name: a, path: ctx}]\n")
    assert load_manifest(manifest_path).packages == []


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        ("images: [{name: Web, path: ctx}]\n", "images[0].name: image name 'Web' must be lowercase"),
        ("images: [{name: -a, path: ctx}]\n", "images[0].name: image name '-a'"),
        ("images: [{name: a..b, path: ctx}]\n", "images[0].name: image name 'a..b'"),
        ("images: [{name: a/b, path: ctx}]\n", "images[0].name: image name 'a/b'"),
        ("images: [{path: ctx}]\n", "images[0].name: required field is missing"),
        ("images: [{name: a}]\n", "images[0]: give exactly one of 'path' or 'git'"),
        ("images: [{name: a, git: https://x/y.git}]\n", "images[0]: 'git' needs a 'ref'"),
        ("images: [{name: a, path: ctx, builder: docker}]\n", "images[0].builder: Input should be"),
        ("images: [{name: a, path: ctx, dockerfile: ../Dockerfile}]\n", "escapes the manifest's tree"),
        ("images: [{name: a, path: ctx, dockerfile: Nope}]\n", "images[0].dockerfile: no file 'Nope'"),
        ("images: [{name: a, path: nope}]\n", "images[0].path: directory 'nope' does not exist"),
        ("images: [{name: a, path: ctx, build_args: {1X: y}}]\n", "'1X' is not a build argument name"),
        (
            "images: [{name: a, path: ctx, build_args: {BUILDFARM_APT_SOURCE: y}}]\n",
            "BUILDFARM_APT_SOURCE is set by the farm itself",
        ),
        ("images: [{name: a, path: ctx, build_args: {X: [1]}}]\n", "build_args.X: give a string"),
        ("images: [{name: a, path: ctx, depends: [a b]}]\n", "is not a step name"),
        ("images: [{name: a, path: ctx}, {name: a, path: ctx}]\n", "two images are named 'a'"),
        ("images: [{name: a, path: ctx, colour: red}]\n", "images[0].colour: unknown field"),
    ],
)
def test_bad_images(tmp_path: Path, images: str, expected: str) -> None:
    _assert_one_line_error(_image_tree(tmp_path, images), expected)


def test_package_depends_field(tmp_path: Path) -> None:
    manifest = _image_tree(tmp_path, "").parent / "m.yaml"
    manifest.write_text(
        "project: p\nbranch: main\nkind: nightly\npackages: [{path: pkg, depends: [img]}]\n"
        "images: [{name: img, path: ctx}]\n"
    )
    assert load_manifest(manifest).packages[0].depends == ["img"]


def test_example_with_image_loads() -> None:
    manifest = load_manifest(Path(__file__).parents[3] / "examples" / "with-image.yaml")
    (image,) = manifest.images
    assert (image.name, image.builder.value, image.depends) == ("greet-image", "kaniko", ["greet-cli"])


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "{path: pkg, dsc: x.dsc}",
            "packages[0]: give exactly one of 'path', 'git', 'dsc', 'source' or 'stx'",
        ),
        ("{source: hello, signed_by: k.asc}", "packages[0]: 'signed_by' goes with 'dsc'"),
        ("{dsc: x.dsc, version: '1.0'}", "packages[0]: 'version' goes with 'source'"),
        (
            "{dsc: ftp://x/y.dsc}",
            "packages[0].dsc: dsc 'ftp://x/y.dsc': give a file of the manifest's tree or an http(s) URL",
        ),
        ("{dsc: notadsc.txt}", "must name a .dsc file"),
        ("{source: Bad_Name}", "is not a Debian source package name"),
        ("{source: hello, version: 'x y'}", "is not a Debian version"),
        (
            "{path: pkg, orig: {url: 'https://x/a.tar.gz'}}",
            "packages[0].orig[0]: an orig 'url' needs its 'sha256'",
        ),
        ("{path: pkg, orig: {url: 'https://x/a.tar.gz', sha256: abc}}", "orig.sha256 must be 64 hex digits"),
        ("{dsc: x.dsc, orig: {path: a.tar.gz}}", "'orig' goes with 'path' or 'git'"),
        ("{dsc: missing.dsc}", "packages[0].dsc: no file 'missing.dsc'"),
    ],
)
def test_bad_source_entries(tmp_path: Path, entry: str, expected: str) -> None:
    _assert_one_line_error(
        _tree(tmp_path, f"project: p\nbranch: main\nkind: nightly\npackages: [{entry}]\n"), expected
    )


def test_a_package_may_require_an_architecture_and_node_labels(tmp_path: Path) -> None:
    text = (
        "project: p\nbranch: main\nkind: nightly\npackages:\n"
        "  - {path: pkg, arch: arm64, requires: [cpu=large, gpu]}\n"
    )
    [package] = load_manifest(_tree(tmp_path, text)).packages
    assert (package.arch, package.requires) == ("arm64", ["cpu=large", "gpu"])
    bad = tmp_path / "bad"
    bad.mkdir()
    text = "project: p\nbranch: main\nkind: nightly\npackages: [{path: pkg, requires: [CPU=Large]}]\n"
    _assert_one_line_error(_tree(bad, text), "requires CPU=Large: give key=value or a tag")
