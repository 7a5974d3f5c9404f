"""The build manifest: which project/branch/kind, which Debian source packages and images.

A manifest is a YAML file::

    project: examples
    branch: r/stx.9.0            # git's ref-name rules
    kind: nightly                # release | nightly | on-demand | personal
    architectures: [amd64, arm64]   # optional: default the build node's architecture
    packages:
      - path: libgreet           # a directory inside the manifest's own tree
      - git: https://example.org/tool.git   # a network URL (model/urlpolicy.py)
        ref: v1.2                # branch, tag or commit
        subdir: packaging        # optional: where debian/ is inside the repository
        depends: [base-image]    # optional: image steps this package waits for
      - path: tool               # 3.0 (quilt): upstream tarballs beside it, or named in orig
        orig: [{url: https://example.org/tool-1.0.tar.gz, sha256: 0f3c...}]
      - dsc: https://deb.debian.org/debian/pool/main/m/mbw/mbw_1.2.2-1.1.dsc
        signed_by: keys/uploader.asc   # optional: the .dsc's signature must verify
      - source: memstat          # from the farm's mirrors, as apt-get source
        version: "1.1"           # optional
      - git: https://salsa.debian.org/debian/hello.git
        ref: debian/latest
        layout: gbp              # git-buildpackage: upstream tarball by gbp export-orig
      - stx: integ/greet/debian  # StarlingX: the directory holding meta_data.yaml
    images:
      - name: greet-image        # registry path component: lowercase [a-z0-9._-]
        path: images/greet       # the build context (or git + ref + subdir, as for packages)
        dockerfile: Dockerfile   # relative to the context (default)
        builder: kaniko          # kaniko (default) | sysbox | local
        build_args: {GREETING: hello}
        depends: [greet-cli]     # package steps (source package names) or other images

A package step's name is its source package name (from debian/control); an image step's name
is its ``name``.  ``depends`` adds explicit edges on top of the Build-Depends the planner
finds; an image that installs a package built in the same build must list that package.

``architectures`` lists the Debian architectures the branch is built for: a package with
``Architecture: any`` binaries gets a step per listed architecture (the first native one keeps
the source package's name, the others are ``<source>:<arch>``, built natively where a node has
that architecture, else cross-built with sbuild ``--host``); ``Architecture: all`` packages are
built once, by the first step.  Without it a build is for the node's own architecture, as before.

A package's ``requires`` (node labels: ``cpu=large``, ``builder=sbuild``, a tag) says where its
step may run, not what it builds: it is not in the step's input key, so the same inputs are
reused whichever node built them.  Its ``arch`` says what it is built for (that architecture
only, by a node of it): that changes the packages, so it is in the key.

``builder`` says which kind of image builder the step needs, not which program: ``kaniko``
(the default) is the farm's daemonless Dockerfile builder, i.e. kaniko pods on Kubernetes and
buildah in the local profile; ``sysbox`` asks for a pod in the sysbox runtime (a Dockerfile
that needs a docker daemon of its own); ``local`` builds with buildah on the worker node itself.
The default is the one that works everywhere without node support.

A ``git`` URL must be a network URL (``https://`` by default; ``http``, ``git`` and ``ssh``
where the admin allows them) of a public host or one the admin allows: never ``file://``, a
local path or a git transport such as ``ext::`` (:mod:`buildfarm.model.urlpolicy`).  No value
may start with ``-``: git and other tools would read it as an option.

Every mistake becomes one :class:`ManifestError` whose message names the file, the field and
what is wrong; nothing is half-accepted.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from buildfarm.model import names
from buildfarm.model.errors import ManifestError, NameError_
from buildfarm.model.labels import LABEL
from buildfarm.model.types import DEFAULT_IMAGE_BUILDER, BuildKind, ImageBuilder
from buildfarm.model.urlpolicy import UrlRefusedError, check_url_syntax, redact_url

MAX_MANIFEST_BYTES = 1 << 20
"""A manifest larger than 1 MiB is certainly a mistake (a binary, a wrong file)."""
SAFE_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it (Debian's is): the pure Python one took
3.6 s of a 5000-package manifest's 5 s."""
MAX_IMAGE_NAME_LENGTH = 100
"""Image names become one registry path component; 100 keeps the whole path far below 255."""
IMAGE_NAME = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
"""The registry's own grammar of one repository path component (distribution's reference.go)."""
BUILD_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEBIAN_ARCH = re.compile(r"[a-z0-9][a-z0-9-]*")
"""A Debian architecture name (dpkg-architecture -L: amd64, arm64, armhf, ppc64el, musl-linux-arm64)."""
RESERVED_BUILD_ARGS = frozenset({"BUILDFARM_APT_SOURCE", "BUILDFARM_IMAGE_PREFIX", "BUILDFARM_REGISTRY"})
"""Build args the farm sets itself for every image step."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _relative_path(value: str, field: str) -> str:
    if value.startswith("-"):
        raise ValueError(f"{field} {value!r} starts with '-' (a tool would read it as an option)")
    pure = PurePosixPath(value)
    if pure.is_absolute():
        raise ValueError(f"{field} must be relative to the manifest's directory, not absolute")
    if ".." in pure.parts:
        raise ValueError(f"{field} {value!r} escapes the manifest's tree ('..')")
    return value


def _check_step_names(values: list[str], field: str) -> list[str]:
    for value in values:
        if (
            not value
            or len(value) > MAX_IMAGE_NAME_LENGTH
            or not re.fullmatch(r"[A-Za-z0-9][\w.+\-]*", value)
        ):
            raise ValueError(f"{field}: {value!r} is not a step name (a source package or image name)")
    if len(set(values)) != len(values):
        raise ValueError(f"{field}: lists a step twice")
    return values


class _TreeSource(_Strict):
    """A directory of the manifest's tree, or a git URL and ref (and a subdirectory of it)."""

    path: str | None = Field(default=None, description="directory relative to the manifest")
    git: str | None = Field(default=None, description="git URL to clone")
    ref: str | None = Field(default=None, description="branch, tag or commit of `git`")
    subdir: str = Field(default=".", description="directory inside the git tree")
    depends: list[str] = Field(default_factory=list, description="names of steps this one waits for")

    @field_validator("depends")
    @classmethod
    def _depends_names(cls, value: list[str]) -> list[str]:
        return _check_step_names(value, "depends")

    @field_validator("path")
    @classmethod
    def _path_inside(cls, value: str | None) -> str | None:
        return None if value is None else _relative_path(value, "path")

    @field_validator("subdir")
    @classmethod
    def _subdir_inside(cls, value: str) -> str:
        return _relative_path(value, "subdir")

    @field_validator("git")
    @classmethod
    def _network_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_url_syntax(value)
        except UrlRefusedError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("ref")
    @classmethod
    def _git_ref(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return names.check_git_ref(value)
        except NameError_ as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _one_origin(self) -> _TreeSource:
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
        return f"{redact_url(self.git or '')}@{self.ref}" + ("" if self.subdir == "." else f":{self.subdir}")


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _http_url(value: str, field: str) -> str:
    if not re.fullmatch(r"https?://[^\s]+", value):
        raise ValueError(f"{field} must be an http(s) URL, not {value!r}")
    return value


class SourceLayout(StrEnum):
    """How a ``git`` package's repository is laid out."""

    PLAIN = "plain"  # a tree with debian/; upstream tarballs named in 'orig' (or none: native)
    GBP = "gbp"  # git-buildpackage: packaging branch, upstream tag, optional pristine-tar branch


class UpstreamFile(_Strict):
    """An upstream tarball (or its .asc) named explicitly: a path of the manifest's tree or a URL."""

    path: str | None = Field(default=None, description="file relative to the manifest")
    url: str | None = Field(default=None, description="http(s) URL to fetch it from")
    sha256: str | None = Field(default=None, description="expected sha256 (required with url)")

    @field_validator("path")
    @classmethod
    def _path_inside(cls, value: str | None) -> str | None:
        return None if value is None else _relative_path(value, "orig.path")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value, "orig.url")

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        if value is not None and not SHA256_HEX.fullmatch(value.lower()):
            raise ValueError("orig.sha256 must be 64 hex digits")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _one_origin(self) -> UpstreamFile:
        if (self.path is None) == (self.url is None):
            raise ValueError("an orig entry gives exactly one of 'path' or 'url'")
        if self.url is not None and self.sha256 is None:
            raise ValueError("an orig 'url' needs its 'sha256'")
        return self

    @property
    def name(self) -> str:
        return PurePosixPath(self.path or (self.url or "").split("?", 1)[0]).name


class PackageSource(_TreeSource):
    """One Debian source package, named one of these ways (each a small resolver in
    :mod:`buildfarm.engine.srcpkg`): ``path`` or ``git`` + ``ref`` (+ ``subdir``), a directory
    holding debian/ whose upstream tarballs lie beside it or are named in ``orig``; ``dsc``, a
    .dsc of the manifest's tree or an http(s) URL (with ``signed_by``, its signature must
    verify); ``source`` (+ ``version``), a source package of the farm's configured mirrors;
    ``git`` + ``ref`` + ``layout: gbp``, a git-buildpackage repository whose upstream tarball
    ``gbp export-orig`` makes (:mod:`buildfarm.engine.gbpsource`); ``stx``, a StarlingX package
    directory holding ``meta_data.yaml`` (:mod:`buildfarm.engine.stxsource`)."""

    path: str | None = Field(default=None, description="directory relative to the manifest")
    orig: list[UpstreamFile] = Field(default_factory=list, description="upstream tarballs and signatures")
    dsc: str | None = Field(default=None, description=".dsc relative to the manifest, or an http(s) URL")
    signed_by: str | None = Field(
        default=None, description="armored OpenPGP public key (inline, or a file of the manifest's tree)"
    )
    source: str | None = Field(default=None, description="source package name in the farm's mirrors")
    version: str | None = Field(default=None, description="its version (default: the newest)")
    layout: SourceLayout = Field(
        default=SourceLayout.PLAIN,
        description="with git: 'gbp' for a git-buildpackage repository (upstream tarball by gbp export-orig)",
    )
    stx: str | None = Field(
        default=None,
        description="StarlingX package directory (holding meta_data.yaml), relative to the manifest",
    )
    arch: str | None = Field(
        default=None,
        description="the one architecture it is built for, natively by a node of it (e.g. arm64; part "
        "of the input key); default: the package's Architecture when it names one, else the build's "
        "architectures",
    )
    requires: list[str] = Field(
        default_factory=list,
        description="node labels its node must have (key=value or tags: builder=sbuild, cpu=large, gpu); "
        "where it runs, not what it builds: not part of the input key",
    )

    @field_validator("arch")
    @classmethod
    def _arch_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", value):
            raise ValueError(f"arch {value!r} is not a Debian architecture name (e.g. amd64, arm64)")
        return value

    @field_validator("requires")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        bad = [label for label in value if not LABEL.match(label)]
        if bad:
            raise ValueError(
                f"requires {', '.join(bad)}: give key=value or a tag (lowercase), e.g. cpu=large"
            )
        return value

    @field_validator("stx")
    @classmethod
    def _stx_inside(cls, value: str | None) -> str | None:
        return None if value is None else _relative_path(value, "stx")

    @field_validator("orig", mode="before")
    @classmethod
    def _orig_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("dsc")
    @classmethod
    def _dsc(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith(("http://", "https://")):
            return _http_url(value, "dsc")
        if "://" in value:
            raise ValueError(f"dsc {value!r}: give a file of the manifest's tree or an http(s) URL")
        if not value.endswith(".dsc"):
            raise ValueError(f"dsc {value!r} must name a .dsc file")
        return _relative_path(value, "dsc")

    @field_validator("source")
    @classmethod
    def _source_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9+.\-]+", value):
            raise ValueError(f"source {value!r} is not a Debian source package name")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~\-]*", value):
            raise ValueError(f"version {value!r} is not a Debian version")
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> PackageSource:
        kinds = [k for k in ("path", "git", "dsc", "source", "stx") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of 'path', 'git', 'dsc', 'source' or 'stx'")
        if self.layout is SourceLayout.GBP:
            if self.git is None:
                raise ValueError("'layout: gbp' goes with 'git' (a git-buildpackage repository)")
            if self.subdir != ".":
                raise ValueError("'layout: gbp' takes no 'subdir': gbp wants debian/ at the repository's top")
            if self.orig:
                raise ValueError("'layout: gbp' takes no 'orig': gbp export-orig makes the upstream tarball")
        if self.git is not None and not self.ref:
            raise ValueError("'git' needs a 'ref' (branch, tag or commit)")
        if self.git is None and (self.ref is not None or self.subdir != "."):
            raise ValueError("'ref' and 'subdir' go with 'git'")
        if self.orig and self.path is None and self.git is None:
            raise ValueError("'orig' goes with 'path' or 'git' (a .dsc names its own files)")
        if self.signed_by is not None and self.dsc is None:
            raise ValueError("'signed_by' goes with 'dsc'")
        if self.version is not None and self.source is None:
            raise ValueError("'version' goes with 'source'")
        return self

    def describe(self) -> str:
        if self.dsc is not None:
            return self.dsc
        if self.source is not None:
            return f"source {self.source}" + (f" {self.version}" if self.version else "")
        if self.stx is not None:
            return f"stx {self.stx}"
        return super().describe()


class ImageSource(_TreeSource):
    """One image step: a build context (directory or git), a Dockerfile in it, build args."""

    name: str = Field(description="image name: one registry path component, lowercase [a-z0-9._-]")
    dockerfile: str = Field(default="Dockerfile", description="relative to the context")
    builder: ImageBuilder = Field(default=DEFAULT_IMAGE_BUILDER, description="kind of image builder")
    build_args: dict[str, str] = Field(default_factory=dict, description="--build-arg NAME=value")

    @field_validator("name")
    @classmethod
    def _image_name(cls, value: str) -> str:
        if len(value) > MAX_IMAGE_NAME_LENGTH or not IMAGE_NAME.fullmatch(value):
            raise ValueError(
                f"image name {value!r} must be lowercase letters, digits and single '.', '_' or '-' "
                f"between them (a registry path component, at most {MAX_IMAGE_NAME_LENGTH} characters)"
            )
        return value

    @field_validator("dockerfile")
    @classmethod
    def _dockerfile_inside(cls, value: str) -> str:
        if not value or value.endswith("/"):
            raise ValueError("dockerfile must name a file in the context")
        return _relative_path(value, "dockerfile")

    @field_validator("build_args", mode="before")
    @classmethod
    def _args_are_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):  # YAML gives numbers and booleans; a build arg is text
            for key, item in value.items():
                if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                    raise ValueError(f"build_args.{key}: give a string (quote it in YAML)")  # noqa: TRY004
            return {str(k): str(v) for k, v in value.items()}
        return value

    @field_validator("build_args")
    @classmethod
    def _arg_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not BUILD_ARG_NAME.fullmatch(key):
                raise ValueError(f"build_args: {key!r} is not a build argument name")
            if key in RESERVED_BUILD_ARGS:
                raise ValueError(f"build_args: {key} is set by the farm itself")
        return value


class Manifest(_Strict):
    project: str
    branch: str
    kind: BuildKind
    packages: list[PackageSource] = Field(default_factory=list)
    images: list[ImageSource] = Field(default_factory=list)
    architectures: list[str] | None = Field(
        default=None, description="Debian architectures of the branch; default: the build node's"
    )

    @field_validator("architectures")
    @classmethod
    def _architectures(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("list at least one architecture, or leave the field out")
        for arch in value:
            if arch in ("all", "any") or not DEBIAN_ARCH.fullmatch(arch):
                raise ValueError(f"{arch!r} is not a Debian architecture (amd64, arm64, armhf, ...)")
        if len(set(value)) != len(value):
            raise ValueError("an architecture is listed twice")
        return value

    @model_validator(mode="after")
    def _something_to_build(self) -> Manifest:
        if not self.packages and not self.images:
            raise ValueError("give at least one package (packages: [...]) or image (images: [...])")
        names_seen: set[str] = set()
        for image in self.images:
            if image.name in names_seen:
                raise ValueError(f"two images are named {image.name!r}")
            names_seen.add(image.name)
        return self

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
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
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
        raise ManifestError(
            f"{source}: the manifest must be a mapping with project, branch, kind, packages and/or images"
        )
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
        data = yaml.load(raw, Loader=SAFE_LOADER)  # a safe loader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{path}: {where}: not valid YAML: {problem}") from exc
    manifest = parse_manifest(data, str(path))
    check_local_paths(manifest, path.parent.resolve(), str(path))
    return manifest


def check_local_paths(manifest: Manifest, root: Path, source: str) -> None:
    """Each ``path`` package must be a directory inside ``root`` holding debian/control; no duplicates.
    Each ``path`` image must be a directory inside ``root`` holding its Dockerfile."""
    seen: dict[str, int] = {}
    for index, package in enumerate(manifest.packages):
        where = f"{source}: packages[{index}]"
        key = package.describe()
        if key in seen:
            raise ManifestError(f"{where}: duplicate of packages[{seen[key]}] ({key})")
        seen[key] = index
        for field, value in [("dsc", package.dsc), *(("orig.path", o.path) for o in package.orig)]:
            if value is None or value.startswith(("http://", "https://")):
                continue
            file = (root / value).resolve()
            if not file.is_relative_to(root):
                raise ManifestError(f"{where}.{field}: {value!r} escapes the manifest's tree")
            if not file.is_file():
                raise ManifestError(f"{where}.{field}: no file {value!r}")
        if package.stx is not None:
            directory = (root / package.stx).resolve()
            if not directory.is_relative_to(root):
                raise ManifestError(f"{where}.stx: {package.stx!r} escapes the manifest's tree")
            if not (directory / "meta_data.yaml").is_file():
                raise ManifestError(f"{where}.stx: {package.stx!r} has no meta_data.yaml")
        if package.path is None:
            continue
        directory = (root / package.path).resolve()
        if not directory.is_relative_to(root):
            raise ManifestError(f"{where}.path: {package.path!r} escapes the manifest's tree")
        if not directory.is_dir():
            raise ManifestError(f"{where}.path: directory {package.path!r} does not exist")
        if not (directory / "debian" / "control").is_file():
            raise ManifestError(f"{where}.path: {package.path!r} has no debian/control")
    for index, image in enumerate(manifest.images):
        if image.path is None:
            continue
        where = f"{source}: images[{index}]"
        directory = (root / image.path).resolve()
        if not directory.is_relative_to(root):
            raise ManifestError(f"{where}.path: {image.path!r} escapes the manifest's tree")
        if not directory.is_dir():
            raise ManifestError(f"{where}.path: directory {image.path!r} does not exist")
        check_dockerfile(directory, image, where)


def check_dockerfile(context: Path, image: ImageSource, where: str) -> None:
    """The Dockerfile must be a regular file inside the context directory."""
    dockerfile = (context / image.dockerfile).resolve()
    if not dockerfile.is_relative_to(context.resolve()):
        raise ManifestError(f"{where}.dockerfile: {image.dockerfile!r} escapes the context")
    if not dockerfile.is_file():
        raise ManifestError(
            f"{where}.dockerfile: no file {image.dockerfile!r} in the context {image.describe()}"
        )
