"""Project, branch and user names: git's rules in, safe repository names and URL paths out.

Names follow ``git check-ref-format`` (so a branch such as ``r/stx.9.0`` is valid) and map
*reversibly* to one path segment made of ``[A-Za-z0-9.-]`` and ``_``-escapes: every other byte,
``_`` itself included, becomes ``_xx`` (lower-case hex of the UTF-8 byte).  Because ``_`` is
always escaped the mapping is injective: two different branches never share a path, and
``r/stx.9.0`` and ``r_stx.9.0`` stay apart (``r_2fstx.9.0`` vs ``r_5fstx.9.0``).  The result is
safe as a directory name, a URL path segment, a Pulp repository name and a Celery queue name.
"""

from __future__ import annotations

import re

from buildfarm.model.errors import NameError_

MAX_NAME_LENGTH = 100
"""Longest accepted name, in characters: keeps escaped names (up to 3x) within Pulp's 255."""

_FORBIDDEN_CHARS = set(" ~^:?*[\\\x7f")
_PLAIN = re.compile(r"[A-Za-z0-9.\-]")
_ESCAPE = re.compile(r"_([0-9a-f]{2})")


MAX_GIT_REF_LENGTH = 255
"""Longest ``ref`` of a git source accepted: git itself has no limit, file systems stop at 255."""


def _ref_format_problem(name: str) -> str | None:
    """Why ``name`` breaks ``git check-ref-format --allow-onelevel`` or would be read as an
    option by git (a leading ``-``), or None if it is fine."""
    if not name:
        return "it is empty"
    if name.startswith("-"):
        return "it starts with '-' (git would read it as an option)"
    if any(ord(c) < 0x20 for c in name) or any(c in _FORBIDDEN_CHARS for c in name):
        return "it contains a space, a control character or one of ~ ^ : ? * [ \\"
    if ".." in name:
        return "it contains '..'"
    if "@{" in name or name == "@":
        return "it contains '@{' or is '@'"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "it starts or ends with '/' or contains '//'"
    if name.endswith("."):
        return "it ends with '.'"
    for component in name.split("/"):
        if component.startswith("."):
            return "a path component starts with '.'"
        if component.endswith(".lock"):
            return "a path component ends with '.lock'"
    return None


def check_ref_name(name: str, what: str = "branch") -> str:
    """Return ``name`` if git would take it as a branch name (``git check-ref-format --branch``:
    its ref-name rules, no leading ``-``, not ``HEAD``), else raise one clear error."""

    def bad(reason: str) -> NameError_:
        return NameError_(f"invalid {what} name {name!r}: {reason}")

    if len(name) > MAX_NAME_LENGTH:
        raise bad(f"it is longer than {MAX_NAME_LENGTH} characters")
    problem = _ref_format_problem(name)
    if problem is not None:
        raise bad(problem)
    if name == "HEAD":
        raise bad("'HEAD' is git's name for the current commit, not a branch")
    return name


def check_git_ref(ref: str) -> str:
    """Return ``ref`` if it can name a branch, tag or commit of a git source (``v1.2``,
    ``refs/tags/v1``, ``HEAD``, a commit id), else raise one clear error: nothing git could
    read as an option or a refspec (``a:b`` would write a ref)."""
    if len(ref) > MAX_GIT_REF_LENGTH:
        raise NameError_(f"invalid git ref {ref[:40]!r}...: longer than {MAX_GIT_REF_LENGTH} characters")
    problem = _ref_format_problem(ref)
    if problem is not None:
        raise NameError_(f"invalid git ref {ref!r}: {problem}")
    return ref


def check_simple_name(name: str, what: str) -> str:
    """Names that are one segment (project, user): git's rules and no '/'."""
    check_ref_name(name, what)
    if "/" in name:
        raise NameError_(f"invalid {what} name {name!r}: it contains '/'")
    return name


def to_safe(name: str) -> str:
    """Map a valid name to one path segment; the inverse is :func:`from_safe`."""
    out = []
    for char in name:
        if _PLAIN.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"_{byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


def from_safe(safe: str) -> str:
    """Invert :func:`to_safe`."""
    raw = bytearray()
    i = 0
    while i < len(safe):
        match = _ESCAPE.match(safe, i)
        if match:
            raw.append(int(match.group(1), 16))
            i = match.end()
        elif _PLAIN.fullmatch(safe[i]):
            raw.extend(safe[i].encode("ascii"))
            i += 1
        else:
            raise NameError_(f"{safe!r} is not an escaped name")
    return raw.decode("utf-8")
