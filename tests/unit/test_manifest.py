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
    manifest = load_manifest(Path(__file__).parents[2] / "examples" / "buildfarm.yaml")
    assert manifest.project == "examples"
    assert manifest.kind is BuildKind.NIGHTLY
    assert len(manifest.packages) == 5


def test_git_package(tmp_path: Path) -> None:
    text = "project: p\nbranch: r/stx.9.0\nkind: release\npackages:\n  - git: https://x/y.git\n    ref: v1\n"
    manifest = load_manifest(_tree(tmp_path, text))
    assert manifest.packages[0].describe() == "https://x/y.git@v1"
    assert manifest.branch == "r/stx.9.0"


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
        ("project: p\nbranch: main\nkind: nightly\npackages: []\n", "packages: List should have at least 1"),
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
            "give exactly one of 'path' or 'git'",
        ),
        ("project: [p\n", "line 2: not valid YAML"),
        ("- just a list\n", "must be a mapping"),
    ],
)
def test_bad_manifests(tmp_path: Path, text: str, expected: str) -> None:
    manifest = _tree(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    message = str(info.value)
    assert message.startswith(str(manifest) + ": ")
    assert expected in message
    assert "\n" not in message


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
