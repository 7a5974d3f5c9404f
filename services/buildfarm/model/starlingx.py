"""StarlingX's ``meta_data.yaml``: what each field means, checked, as the farm builds it.

A StarlingX package directory (``<package>/debian/`` in StarlingX's trees) holds
``meta_data.yaml`` beside ``deb_folder/`` (the debian/ directory, laid over the upstream one),
``deb_patches/`` (a series of patches to debian/), ``patches/`` (a series of patches to the
upstream source) and ``files/`` (extra files copied into the source).  StarlingX's own tool,
``build-tools/stx/debrepack.py`` in starlingx/root, reads it; this module follows its meaning,
field by field, and is written anew:

* ``debver`` (required): the Debian version of the package before the StarlingX revision
  (a trailing ``@`` is dropped, as debrepack does); ``debname``: the source name (default: the
  package directory's name, the parent of the directory holding meta_data.yaml);
* where the source comes from, the first of: ``dl_path`` (``name``, ``url``, ``sha256sum`` or
  ``md5sum``: an upstream tarball, unpacked without its top directory and repacked as
  ``<debname>_<upstream>.orig.tar.gz``), ``src_path`` (a directory of the tree, relative to the
  package directory), ``archive`` (a URL directory holding ``<debname>_<debver>.dsc``, with an
  optional ``dsc_sha256``), else ``debname`` = ``debver`` from the farm's mirrors (as
  ``apt-get source``); ``dl_files`` (name: ``url``, ``sha256sum``/``md5sum``, ``topdir``) and
  ``src_files`` are extra files copied into the source;
* ``revision`` appends ``<dist>.<N>`` to the changelog's version: ``dist`` (``$STX_DIST``
  expands to the farm's StarlingX dist, ``.stx`` by default), and N the sum of the git commit
  counts asked for (``PKG_GITREVCOUNT``: the package directory, since ``PKG_BASE_SRCREV`` when
  given; ``SRC_GITREVCOUNT``: ``src_path`` since its ``SRC_BASE_SRCREV``; ``GITREVCOUNT``:
  ``SRC_DIR`` (default the package directory) since ``BASE_SRCREV``), each plus the number of
  uncommitted changes there, and ``stx_patch``, a fixed offset.

Fields the farm does not support are refused by name, never ignored: ``dl_hook`` (a script of
the tree the farm would run), ``FILES_GITREVCOUNT`` and any field debrepack does not know.
Variables other than ``$STX_DIST`` are refused: the farm has no ``$MY_REPO``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from buildfarm.model.errors import ManifestError

MAX_META_DATA_BYTES = 256 << 10
"""A meta_data.yaml is a few hundred bytes; 256 KiB is not one."""
DEFAULT_STX_DIST = ".stx"
"""What StarlingX's build environment sets ``STX_DIST`` to."""
TOP_FIELDS = frozenset(
    {"debname", "debver", "dl_path", "dl_files", "src_path", "src_files", "archive", "dsc_sha256", "revision"}
)
REFUSED_FIELDS = {
    "dl_hook": "runs a script of the package directory on the farm; give dl_path or dl_files instead",
}
REVISION_FIELDS = frozenset(
    {"dist", "PKG_GITREVCOUNT", "PKG_BASE_SRCREV", "SRC_GITREVCOUNT", "GITREVCOUNT", "stx_patch"}
)
REFUSED_REVISION_FIELDS = {
    "FILES_GITREVCOUNT": "per-file commit counts are not supported by the farm",
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MD5 = re.compile(r"[0-9a-f]{32}")
_SRCREV = re.compile(r"[0-9a-fA-F]{4,40}|[A-Za-z0-9][A-Za-z0-9._/\-]{0,200}")
"""A base revision: a commit id or a ref name (never option-shaped)."""
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.~_\-]*")
_DEB_VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~\-]*")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Download:
    """A file debrepack downloads: ``dl_path`` or one of ``dl_files``."""

    name: str
    url: str
    sha256: str | None
    md5: str | None
    topdir: str | None = None


@dataclass(frozen=True)
class RevCount:
    """One git commit count of ``revision``: in ``directory`` (relative to the package
    directory; None: the directory holding meta_data.yaml), since ``base`` when given."""

    field: str
    directory: str | None
    base: str | None


@dataclass(frozen=True)
class Revision:
    dist: str
    counts: tuple[RevCount, ...]
    stx_patch: int

    def suffix(self, commits: int) -> str:
        """What debrepack appends to the version: ``<dist>.<N>``."""
        return f"{self.dist}.{commits + self.stx_patch}"


@dataclass(frozen=True)
class MetaData:
    debname: str | None
    debver: str
    dl_path: Download | None
    dl_files: tuple[Download, ...]
    src_path: str | None
    src_files: tuple[str, ...]
    archive: str | None
    dsc_sha256: str | None
    revision: Revision | None


def _expand(value: str, field: str, where: str, variables: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise ManifestError(f"{where}: {field}: variable ${name} is not known to the farm")
        return variables[name]

    return _VARIABLE.sub(one, value)


def _text(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool) or str(value).strip() == "":
        raise ManifestError(f"{where}: {field} must be a non-empty string")
    return str(value).strip()


def _relative(value: Any, field: str, where: str) -> str:
    text = _text(value, field, where)
    if "$" in text:
        raise ManifestError(f"{where}: {field}: {text!r} uses a variable; the farm knows none for paths")
    if text.startswith("/"):
        raise ManifestError(f"{where}: {field}: {text!r} must be relative to the package directory")
    return text


def _download(value: Any, field: str, where: str, *, name: str | None = None) -> Download:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: {field} must be a mapping")
    allowed = {"url", "sha256sum", "md5sum"} | ({"name"} if name is None else {"topdir"})
    for key in value:
        if key not in allowed:
            raise ManifestError(f"{where}: {field}.{key} is not a field the farm supports")
    file_name = name if name is not None else _text(value.get("name"), f"{field}.name", where)
    if not _FILE_NAME.fullmatch(file_name):
        raise ManifestError(f"{where}: {field}: {file_name!r} is not a plain file name")
    url = _text(value.get("url"), f"{field}.url", where)
    if not re.fullmatch(r"https?://\S+", url):
        raise ManifestError(f"{where}: {field}.url must be an http(s) URL, not {url!r}")
    sha = str(value["sha256sum"]).lower() if "sha256sum" in value else None
    md5 = str(value["md5sum"]).lower() if "md5sum" in value else None
    if sha is not None and not _SHA256.fullmatch(sha):
        raise ManifestError(f"{where}: {field}.sha256sum must be 64 hex digits")
    if md5 is not None and not _MD5.fullmatch(md5):
        raise ManifestError(f"{where}: {field}.md5sum must be 32 hex digits")
    if sha is None and md5 is None:
        raise ManifestError(f"{where}: {field} needs sha256sum (or md5sum)")
    topdir = value.get("topdir")
    if topdir is not None:
        topdir = _text(topdir, f"{field}.topdir", where)
        if not _FILE_NAME.fullmatch(topdir):
            raise ManifestError(f"{where}: {field}.topdir {topdir!r} is not a plain directory name")
    return Download(file_name, url, sha, md5, topdir)


def _srcrev(value: Any, field: str, where: str) -> str:
    text = _text(value, field, where)
    if not _SRCREV.fullmatch(text) or ".." in text:
        raise ManifestError(f"{where}: {field} {text!r} is not a commit id or ref name")
    return text


def _revision(value: Any, where: str, variables: dict[str, str]) -> Revision:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: revision must be a mapping")
    for key in value:
        if key in REFUSED_REVISION_FIELDS:
            raise ManifestError(f"{where}: revision.{key}: {REFUSED_REVISION_FIELDS[key]}")
        if key not in REVISION_FIELDS:
            raise ManifestError(f"{where}: revision.{key} is not a field the farm supports")
    dist = value.get("dist")
    dist = (
        ""
        if dist is None
        else _expand(_text(dist, "revision.dist", where), "revision.dist", where, variables)
    )
    counts: list[RevCount] = []
    # presence switches a count on, whatever its value: debrepack reads them so
    if "PKG_GITREVCOUNT" in value:
        base = value.get("PKG_BASE_SRCREV")
        counts.append(
            RevCount(
                "revision.PKG_GITREVCOUNT",
                None,
                None if base is None else _srcrev(base, "revision.PKG_BASE_SRCREV", where),
            )
        )
    elif "PKG_BASE_SRCREV" in value:
        raise ManifestError(f"{where}: revision.PKG_BASE_SRCREV goes with revision.PKG_GITREVCOUNT")
    if "SRC_GITREVCOUNT" in value:
        spec = value["SRC_GITREVCOUNT"]
        if not isinstance(spec, dict) or set(spec) - {"SRC_BASE_SRCREV"}:
            raise ManifestError(f"{where}: revision.SRC_GITREVCOUNT must be a mapping with SRC_BASE_SRCREV")
        base = spec.get("SRC_BASE_SRCREV")
        counts.append(
            RevCount(
                "revision.SRC_GITREVCOUNT",
                "<src_path>",
                None if base is None else _srcrev(base, "revision.SRC_GITREVCOUNT.SRC_BASE_SRCREV", where),
            )
        )
    if "GITREVCOUNT" in value:
        spec = value["GITREVCOUNT"]
        if not isinstance(spec, dict) or set(spec) - {"BASE_SRCREV", "SRC_DIR"}:
            raise ManifestError(f"{where}: revision.GITREVCOUNT must be a mapping of BASE_SRCREV and SRC_DIR")
        if "BASE_SRCREV" not in spec:
            raise ManifestError(f"{where}: revision.GITREVCOUNT needs BASE_SRCREV")
        src_dir = spec.get("SRC_DIR")
        counts.append(
            RevCount(
                "revision.GITREVCOUNT",
                None if not src_dir else _relative(src_dir, "revision.GITREVCOUNT.SRC_DIR", where),
                _srcrev(spec["BASE_SRCREV"], "revision.GITREVCOUNT.BASE_SRCREV", where),
            )
        )
    stx_patch = value.get("stx_patch", 0)
    if not isinstance(stx_patch, int) or isinstance(stx_patch, bool) or stx_patch < 0:
        raise ManifestError(f"{where}: revision.stx_patch must be a whole number")
    return Revision(dist, tuple(counts), stx_patch)


def parse_meta_data(raw: bytes, where: str, variables: dict[str, str] | None = None) -> MetaData:
    """The checked fields of one meta_data.yaml; one line naming ``where`` and the field per
    mistake.  ``variables`` are the ``$NAME`` values ``revision.dist`` may use."""
    known = {"STX_DIST": DEFAULT_STX_DIST} | (variables or {})
    if len(raw) > MAX_META_DATA_BYTES:
        raise ManifestError(f"{where}: larger than {MAX_META_DATA_BYTES} bytes; not a meta_data.yaml")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{where}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: must be a mapping of fields")
    for key in data:
        if key in REFUSED_FIELDS:
            raise ManifestError(f"{where}: {key}: {REFUSED_FIELDS[key]}")
        if key not in TOP_FIELDS:
            raise ManifestError(f"{where}: {key} is not a field the farm supports")
    if "debver" not in data:
        raise ManifestError(f"{where}: debver is required")
    debver = _text(data["debver"], "debver", where).rstrip("@")
    if not _DEB_VERSION.fullmatch(debver):
        raise ManifestError(f"{where}: debver {debver!r} is not a Debian version")
    debname = None
    if data.get("debname") is not None:
        debname = _text(data["debname"], "debname", where)
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.\-]+", debname):
            raise ManifestError(f"{where}: debname {debname!r} is not a Debian source package name")
    dl_path = None if data.get("dl_path") is None else _download(data["dl_path"], "dl_path", where)
    dl_files_raw = data.get("dl_files") or {}
    if not isinstance(dl_files_raw, dict):
        raise ManifestError(f"{where}: dl_files must be a mapping of file name to url and checksum")
    dl_files = tuple(
        _download(spec, f"dl_files.{name}", where, name=str(name)) for name, spec in dl_files_raw.items()
    )
    src_path = None if data.get("src_path") is None else _relative(data["src_path"], "src_path", where)
    src_files_raw = data.get("src_files") or []
    if not isinstance(src_files_raw, list):
        raise ManifestError(f"{where}: src_files must be a list of paths")
    src_files = tuple(_relative(item, "src_files", where) for item in src_files_raw)
    archive = None
    if data.get("archive") is not None:
        archive = _text(data["archive"], "archive", where)
        if not re.fullmatch(r"https?://\S+", archive):
            raise ManifestError(f"{where}: archive must be an http(s) URL, not {archive!r}")
    dsc_sha256 = None
    if "dsc_sha256" in data:
        dsc_sha256 = str(data["dsc_sha256"] or "").lower()
        if not _SHA256.fullmatch(dsc_sha256):
            raise ManifestError(f"{where}: dsc_sha256 must be 64 hex digits")
    revision = None if "revision" not in data else _revision(data["revision"], where, known)
    counted = {c.field for c in revision.counts} if revision is not None else set()
    if "revision.SRC_GITREVCOUNT" in counted and src_path is None:
        raise ManifestError(f"{where}: revision.SRC_GITREVCOUNT is set, but there is no src_path")
    return MetaData(
        debname=debname,
        debver=debver,
        dl_path=dl_path,
        dl_files=dl_files,
        src_path=src_path,
        src_files=src_files,
        archive=archive,
        dsc_sha256=dsc_sha256,
        revision=revision,
    )
