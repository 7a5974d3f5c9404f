"""What a step's built packages *are*, apart from when they were made: its output identity.

Two builds of the same source at different times give ``.deb`` files whose bytes differ although
a dependent that installs them sees the same thing: the ar and tar members carry the build's
time (or ``SOURCE_DATE_EPOCH``), the members may come in another order or another compression,
and the ``.buildinfo`` records the build's date and environment.  OBS's build-compare and
diffoscope's deb comparison look past that; so does this module, with python-debian's
``debfile`` reading the packages:

* a ``.deb`` (or ``.udeb``) is described by its control fields (as dpkg-deb wrote them, in any
  order), the other control members by content (``md5sums`` left out: it follows from the data)
  and every data member by path, type, mode, owner, link target and content digest; member
  times, member order and compression are left out;
* ``.buildinfo`` files (build dates, the builder's environment) are left out;
* an image is its manifest digest, as pushed.

:func:`output_identity` hashes the descriptions of all of a step's packages into one digest.
Equal digests mean every file and control field a dependent installs is the same, so a
dependent built against one set of packages is built against the other as well
(``engine.outputs`` uses it to reuse dependents).  :func:`compare_debs` says what differs, for
people and tests.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from debian.debfile import DebError, DebFile

from buildfarm.model.errors import PermanentError

IDENTITY_VERSION = 1
"""Bumped when the description changes: identities of different versions never compare equal."""
PACKAGE_SUFFIXES = (".deb", ".udeb")
IGNORED_CONTROL_MEMBERS = frozenset({"md5sums"})
"""Control members derived from the data members (compared themselves)."""

Description = dict[str, Any]


def _member_name(name: str) -> str:
    return name.removeprefix("./").rstrip("/") or "."


def _sha256(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    with handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _members(tar: tarfile.TarFile, skip: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Every member by name, type, mode, owner, link and content digest; never its time.

    Each member is read as the archive comes (``getmembers`` first would make every read seek
    back into the compressed stream: a 100 MB package took minutes instead of seconds)."""
    out = []
    for member in tar:
        name = _member_name(member.name)
        if name in skip:
            continue
        entry: dict[str, Any] = {
            "name": name,
            "type": member.type.decode("ascii", "replace"),
            "mode": f"{member.mode:04o}",
            "owner": f"{member.uid}:{member.gid}:{member.uname}:{member.gname}",
        }
        if member.issym() or member.islnk():
            entry["link"] = member.linkname
        elif member.isfile():
            handle = tar.extractfile(member)
            assert handle is not None  # a regular file always has content
            entry["sha256"] = _sha256(handle)
        out.append(entry)
    return sorted(out, key=lambda e: str(e["name"]))


def describe_deb(path: Path) -> Description:
    """A binary package's control fields and members, without what only dates its build."""
    try:
        deb = DebFile(filename=str(path))
    except (DebError, OSError, tarfile.TarError, EOFError, ValueError) as exc:
        raise PermanentError(f"{path.name}: not a readable Debian package: {exc}") from exc
    try:
        fields = {str(k): str(v).strip() for k, v in deb.control.debcontrol().items()}
        control = _members(deb.control.tgz(), skip=IGNORED_CONTROL_MEMBERS | {"control"})
        data = _members(deb.data.tgz())
    except (DebError, OSError, tarfile.TarError, EOFError, ValueError, KeyError) as exc:
        raise PermanentError(f"{path.name}: not a readable Debian package: {exc}") from exc
    finally:
        deb.close()
    return {"fields": dict(sorted(fields.items())), "control": control, "data": data}


def is_package(filename: str) -> bool:
    return filename.endswith(PACKAGE_SUFFIXES)


def identity_of(descriptions: Iterable[Description], images: Iterable[str] = ()) -> str:
    """One digest for a step's described packages (in any order) and its image digests."""
    material = {
        "v": IDENTITY_VERSION,
        "packages": sorted(json.dumps(d, sort_keys=True, separators=(",", ":")) for d in descriptions),
        "images": sorted(images),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def output_identity(paths: Iterable[Path]) -> str:
    """The identity of a step's built files: its packages, normalised; other files left out."""
    return identity_of(describe_deb(p) for p in paths if is_package(p.name))


def compare_debs(old: Path, new: Path) -> list[str]:
    """What differs between two binary packages, one line each; empty when they are the same."""
    a, b = describe_deb(old), describe_deb(new)
    out: list[str] = []
    for name in sorted(a["fields"].keys() | b["fields"].keys()):
        if a["fields"].get(name) != b["fields"].get(name):
            out.append(f"control field {name}: {a['fields'].get(name)!r} -> {b['fields'].get(name)!r}")
    for part in ("control", "data"):
        before = {e["name"]: e for e in a[part]}
        after = {e["name"]: e for e in b[part]}
        for name in sorted(before.keys() - after.keys()):
            out.append(f"{part} member {name}: removed")
        for name in sorted(after.keys() - before.keys()):
            out.append(f"{part} member {name}: added")
        for name in sorted(before.keys() & after.keys()):
            changed = [
                k
                for k in before[name].keys() | after[name].keys()
                if before[name].get(k) != after[name].get(k)
            ]
            if changed:
                out.append(f"{part} member {name}: {', '.join(sorted(changed))} differ")
    return out
