"""The build manifest: which project/branch/kind, which Debian source packages.

A manifest is a YAML file::

    project: examples
    branch: r/stx.9.0            # git's ref-name rules
    kind: nightly                # release | nightly | on-demand | personal
    packages:
      - path: libgreet           # a directory inside the manifest's own tree
      - git: https://example.org/tool.git
        ref: v1.2                # branch, tag or commit
        subdir: packaging        # optional: where debian/ is inside the repository

Every mistake becomes one :class:`ManifestError` whose message names the file, the field and
what is wrong; nothing is half-accepted.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from buildfarm.model import names
from buildfarm.model.errors import ManifestError, NameError_

MAX_MANIFEST_BYTES = 1 << 20
"""A manifest larger than 1 MiB is certainly a mistake (a binary, a wrong file)."""


class BuildKind(StrEnum):
    RELEASE = "release"
    NIGHTLY = "nightly"
    ON_DEMAND = "on-demand"
    PERSONAL = "personal"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _relative_path(value: str, field: str) -> str:
    pure = PurePosixPath(value)
    if pure.is_absolute():
        raise ValueError(f"{field} must be relative to the manifest's directory, not absolute")
    if ".." in pure.parts:
        raise ValueError(f"{field} {value!r} escapes the manifest's tree ('..')")
    return value


class PackageSource(_Strict):
    """One Debian source package: a directory of the manifest's tree, or a git URL and ref."""

    path: str | None = Field(default=None, description="directory with debian/, relative to the manifest")
    git: str | None = Field(default=None, description="git URL to clone")
    ref: str | None = Field(default=None, description="branch, tag or commit of `git`")
    subdir: str = Field(default=".", description="directory with debian/ inside the git tree")

    @field_validator("path")
    @classmethod
    def _path_inside(cls, value: str | None) -> str | None:
        return None if value is None else _relative_path(value, "path")

    @field_validator("subdir")
    @classmethod
    def _subdir_inside(cls, value: str) -> str:
        return _relative_path(value, "subdir")

    @model_validator(mode="after")
    def _one_origin(self) -> PackageSource:
        if (self.path is None) == (self.git is None):
            raise ValueError("give exactly one of 'path' or 'git'")
        if self.git is not None and not self.ref:
            raise ValueError("'git' needs a 'ref' (branch, tag or commit)")
        if self.path is not None and (self.ref is not None or self.subdir != "."):
            raise ValueError("'ref' and 'subdir' go with 'git', not with 'path'")
        return self

    def describe(self) -> str:
        if self.path is not None:
            return self.path
        return f"{self.git}@{self.ref}" + ("" if self.subdir == "." else f":{self.subdir}")


class Manifest(_Strict):
    project: str
    branch: str
    kind: BuildKind
    packages: Annotated[list[PackageSource], Field(min_length=1)]

    @field_validator("project")
    @classmethod
    def _project_name(cls, value: str) -> str:
        try:
            return names.check_simple_name(value, "project")
        except NameError_ as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("branch")
    @classmethod
    def _branch_name(cls, value: str) -> str:
        try:
            return names.check_ref_name(value, "branch")
        except NameError_ as exc:
            raise ValueError(str(exc)) from exc


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _first_error(source: str, exc: ValidationError) -> ManifestError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if p not in ("function-after[_one_origin(), PackageSource]",))
    where = _location(loc)
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    elif err["type"] == "missing":
        message = "required field is missing"
    else:
        message = err["msg"].removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return ManifestError(f"{source}: {where}: {message}{suffix}")


def parse_manifest(data: Any, source: str) -> Manifest:
    """Validate already-loaded YAML data; ``source`` names the file in error messages."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: the manifest must be a mapping with project, branch, kind, packages")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise _first_error(source, exc) from exc


def load_manifest(path: Path) -> Manifest:
    """Read, parse and check a manifest file, including that its package directories exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no such manifest file") from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{path}: {where}: not valid YAML: {problem}") from exc
    manifest = parse_manifest(data, str(path))
    check_local_paths(manifest, path.parent.resolve(), str(path))
    return manifest


def check_local_paths(manifest: Manifest, root: Path, source: str) -> None:
    """Each ``path`` package must be a directory inside ``root`` holding debian/control; no duplicates."""
    seen: dict[str, int] = {}
    for index, package in enumerate(manifest.packages):
        where = f"{source}: packages[{index}]"
        key = package.describe()
        if key in seen:
            raise ManifestError(f"{where}: duplicate of packages[{seen[key]}] ({key})")
        seen[key] = index
        if package.path is None:
            continue
        directory = (root / package.path).resolve()
        if not directory.is_relative_to(root):
            raise ManifestError(f"{where}.path: {package.path!r} escapes the manifest's tree")
        if not directory.is_dir():
            raise ManifestError(f"{where}.path: directory {package.path!r} does not exist")
        if not (directory / "debian" / "control").is_file():
            raise ManifestError(f"{where}.path: {package.path!r} has no debian/control")
