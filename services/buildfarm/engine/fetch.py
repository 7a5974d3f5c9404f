"""Bring each package's source tree and each image's build context to a local directory.

A tree is a path of the manifest's own directory, a git clone, or (``prepared``, by index) a
directory the API already unpacked from an uploaded tarball: a remote client sends its local
``path`` trees, since the farm cannot read the client's disk.

git runs with user input on its command line, as the farm: every URL passes the farm's
:class:`~buildfarm.model.urlpolicy.UrlPolicy` first (and its checked addresses are pinned),
values come after ``--end-of-options``, and git's own configuration allows only that URL's
protocol, follows no redirect and runs no hook.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

from buildfarm.model import names
from buildfarm.model.errors import ManifestError, NameError_, TemporaryError
from buildfarm.model.manifest import ImageSource, Manifest, PackageSource, check_dockerfile
from buildfarm.model.urlpolicy import (
    AllowedUrl,
    UrlPolicy,
    UrlRefusedError,
    check_url,
    redact_text,
)

GIT_TIMEOUT_SECONDS = 300
"""A clone slower than 5 minutes is stuck (or enormous); fail it rather than hang a submit."""
GIT_NETWORK_FAILURES = (
    "unable to connect",  # git://
    "could not resolve host",  # http(s), ssh
    "failed to connect",
    "couldn't connect",
    "connection refused",
    "connection reset",
    "connection timed out",
    "operation timed out",
    "temporary failure in name resolution",
    "the remote end hung up unexpectedly",
    "returned error: 5",  # an HTTP 5xx of the git server
)
"""git's words for a server it could not reach or that failed mid-way: temporary (a nightly
schedule tries again), unlike a missing repository or ref."""
MAX_GIT_ERROR_CHARS = 400
"""Bound on the git error text kept in a message: its first ``fatal:``/``error:`` lines."""
GIT_ENV = {
    "PATH": "/usr/bin:/bin",
    "GIT_TERMINAL_PROMPT": "0",  # never wait for a password nobody types
    "GIT_ASKPASS": "/bin/false",
    "SSH_ASKPASS": "/bin/false",
    "GIT_CONFIG_NOSYSTEM": "1",  # only the options below: no admin's or user's config applies
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_PROTOCOL_FROM_USER": "0",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
}
"""git's environment: nothing of the farm process's, no prompts, no config files."""


def _git_options(allowed: AllowedUrl | None) -> list[str]:
    """``-c`` options of every git run: only the checked URL's protocol, no redirects (to a host
    that was not checked), no hooks, and (http/https) the checked addresses pinned."""
    options = {
        "protocol.allow": "never",
        "protocol.file.allow": "never",
        "protocol.ext.allow": "never",
        "http.followRedirects": "false",
        "core.hooksPath": "/dev/null",
        "core.fsmonitor": "false",
        "submodule.recurse": "false",
    }
    if allowed is not None:
        options[f"protocol.{allowed.scheme}.allow"] = "always"
    out: list[str] = []
    for key, value in options.items():
        out += ["-c", f"{key}={value}"]
    if allowed is not None and allowed.scheme in {"http", "https"}:
        pinned = ",".join(f"[{a}]" if ":" in a else a for a in allowed.addresses)
        out += ["-c", f"http.curloptResolve={allowed.host}:{allowed.port}:{pinned}"]
    return out


def _git_error(stderr: str) -> str:
    """git's meaningful lines (``fatal:``/``error:`` and what follows them; secrets hidden),
    bounded: not its last line, which is often the end of a hint."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if line.startswith(("fatal:", "error:"))), 0)
    kept = [line for line in lines[first:] if not line.startswith("hint:")][:3]
    text = redact_text(" ".join(kept)) or "(no message)"
    return text if len(text) <= MAX_GIT_ERROR_CHARS else text[: MAX_GIT_ERROR_CHARS - 3] + "..."


def _git(args: list[str], cwd: Path, what: str, allowed: AllowedUrl | None = None) -> str:
    try:
        result = subprocess.run(
            ["git", *_git_options(allowed), *args],
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            env=GIT_ENV,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise ManifestError("git is not installed (Debian package: git)") from exc
    except subprocess.TimeoutExpired as exc:
        raise TemporaryError(f"{what}: git {args[0]} took over {GIT_TIMEOUT_SECONDS} s") from exc
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr or ""
        if allowed is not None and any(words in stderr.lower() for words in GIT_NETWORK_FAILURES):
            # one message whether the port is closed, filtered or dropped mid-way: a failed fetch
            # tells nothing about what listens there
            raise TemporaryError(
                f"{what}: git {args[0]} failed: no git server answered at {allowed.host} port {allowed.port}"
            ) from exc
        raise ManifestError(f"{what}: git {args[0]} failed: {_git_error(stderr)}") from exc
    return result.stdout


MAX_EXTRA_REFS = 8
"""Refs fetched beside the checked-out one (a gbp repository's upstream tag and pristine-tar
branch): a handful, never a whole repository."""


def fetch_refs(url: str, refs: list[str], clone: Path, what: str, policy: UrlPolicy) -> list[str]:
    """Fetch those of ``refs`` (full names, ``refs/heads/...`` or ``refs/tags/...``) that
    ``url`` has into the same names of ``clone``, one commit deep each; the ones it had.

    ``url`` passes ``policy`` again (its addresses pinned), and every ref git's ref rules, as in
    :func:`checkout`.  A ref the repository lacks is not an error here (the caller says what it
    needed); a server that cannot be reached is.
    """
    if len(refs) > MAX_EXTRA_REFS:
        raise ManifestError(f"{what}: more than {MAX_EXTRA_REFS} extra refs asked for")
    try:
        allowed = check_url(url, policy)
        for ref in refs:
            if not ref.startswith(("refs/heads/", "refs/tags/")):
                raise ManifestError(f"{what}: {ref!r} is not a branch or tag ref")
            names.check_git_ref(ref)
    except (UrlRefusedError, NameError_) as exc:
        raise ManifestError(f"{what}: {exc}") from exc
    except TemporaryError as exc:
        raise TemporaryError(f"{what}: {exc}", exc.retry_after) from exc
    listed = _git(["ls-remote", "--end-of-options", allowed.url, *refs], clone, what, allowed)
    present = {line.split("\t", 1)[1] for line in listed.splitlines() if "\t" in line}
    found = [ref for ref in refs if ref in present]
    if found:
        specs = [f"+{ref}:{ref}" for ref in found]
        _git(
            ["fetch", "-q", "--no-tags", "--depth", "1", "--end-of-options", allowed.url, *specs],
            clone,
            what,
            allowed,
        )
    return found


def checkout(url: str, ref: str, clone: Path, what: str, policy: UrlPolicy) -> None:
    """Check out ``ref`` of the git repository ``url`` (shallow) into the new directory ``clone``;
    a failure is one line naming ``what``.

    ``url`` must pass ``policy`` (a network URL of an allowed host) and ``ref`` git's ref rules,
    whoever checked them before: nothing reaches git's command line as an option.
    """
    try:
        allowed = check_url(url, policy)
        names.check_git_ref(ref)
    except (UrlRefusedError, NameError_) as exc:
        raise ManifestError(f"{what}: {exc}") from exc
    except TemporaryError as exc:
        raise TemporaryError(f"{what}: {exc}", exc.retry_after) from exc
    clone.mkdir()
    _git(["init", "-q"], clone, what)
    _git(["fetch", "-q", "--depth", "1", "--end-of-options", allowed.url, ref], clone, what, allowed)
    _git(["checkout", "-q", "--detach", "FETCH_HEAD", "--"], clone, what)
    _refuse_escaping_links(clone, what)


def _refuse_escaping_links(clone: Path, what: str) -> None:
    """A symlink of the checked-out tree must stay inside it: ``debian/changelog -> /etc/shadow``
    would otherwise be read as the farm, and its first line shown in a parse error."""
    root = clone.resolve()
    for directory, dirnames, filenames in os.walk(clone):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in (*dirnames, *filenames):
            path = Path(directory) / name
            if path.is_symlink() and not _inside(path, root):
                shown = path.relative_to(clone).as_posix()
                raise ManifestError(f"{what}: symlink {shown} points outside the repository")


def _inside(link: Path, root: Path) -> bool:
    try:
        return link.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop: nothing a build can use
        return False


def check_source_urls(manifest: Manifest, policy: UrlPolicy) -> None:
    """Every git, .dsc and upstream tarball URL of ``manifest`` passes ``policy`` before anything
    is fetched (each is checked again just before its fetch, a redirect's target too): a refused
    one costs no clone of the others, and answers the same whatever else the manifest holds."""
    urls: list[tuple[str, str]] = []
    for field, sources in (("packages", manifest.packages), ("images", manifest.images)):
        for index, source in enumerate(sources):
            where = f"{field}[{index}] ({source.describe()})"
            if source.git is not None:
                urls.append((where, source.git))
            if isinstance(source, PackageSource):  # a .dsc or upstream tarball URL: fetched too
                if source.dsc is not None and source.dsc.startswith(("http://", "https://")):
                    urls.append((where, source.dsc))
                urls += [(where, orig.url) for orig in source.orig if orig.url is not None]
    for where, url in urls:
        try:
            check_url(url, policy)
        except UrlRefusedError as exc:
            raise ManifestError(f"{where}: {exc}") from exc
        except TemporaryError as exc:
            raise TemporaryError(f"{where}: {exc}", exc.retry_after) from exc


def _clone(source: PackageSource | ImageSource, clone: Path, what: str, policy: UrlPolicy) -> Path:
    """Check out ``source``'s ref into the empty directory ``clone``; the subdir it names."""
    assert source.git is not None and source.ref is not None
    checkout(source.git, source.ref, clone, what, policy)
    return (clone / source.subdir).resolve()


def _resolved(path: Path, parents: dict[Path, Path]) -> Path:
    """``path.resolve()``, the parent directory's resolution shared (``parents``): thousands of
    trees in one directory cost one lstat each, not one per component of their path."""
    if path.name in ("", ".", ".."):
        return path.resolve()
    parent = parents.get(path.parent)
    if parent is None:
        parent = parents[path.parent] = path.parent.resolve()
    here = parent / path.name
    return here.resolve() if here.is_symlink() else here


@contextmanager
def source_directories(
    manifest: Manifest, root: Path, policy: UrlPolicy, prepared: dict[int, Path] | None = None
) -> Iterator[list[tuple[PackageSource, Path | None]]]:
    """Yield (package, directory with debian/) for each package; clones live until the block ends.
    A package named by a .dsc or a source name has no tree: its directory is None.

    ``prepared`` maps a package's index to a directory already holding its tree (an uploaded
    source tarball, unpacked by the API); other ``path`` packages are read below ``root``.
    """
    with TemporaryDirectory(prefix="buildfarm-src-") as scratch:
        out: list[tuple[PackageSource, Path | None]] = []
        parents: dict[Path, Path] = {}
        for index, package in enumerate(manifest.packages):
            if prepared is not None and index in prepared:
                out.append((package, prepared[index]))
                continue
            if package.path is None and package.git is None:
                out.append((package, None))
                continue
            if package.path is not None:
                out.append((package, _resolved(root / package.path, parents)))
                continue
            clone = Path(scratch) / str(index)
            what = f"packages[{index}] ({package.describe()})"
            directory = _clone(package, clone, what, policy)
            if not directory.is_relative_to(clone) or not (directory / "debian" / "control").is_file():
                raise ManifestError(f"{what}: no debian/control in {package.subdir!r} of that ref")
            out.append((package, directory))
        yield out


@contextmanager
def context_directories(
    manifest: Manifest, root: Path, policy: UrlPolicy, prepared: dict[int, Path] | None = None
) -> Iterator[list[tuple[ImageSource, Path]]]:
    """Yield (image, context directory) for each image step; clones live until the block ends.

    ``prepared`` maps an image's index to a directory already holding its context (uploaded
    by a remote client, unpacked by the API); other ``path`` contexts are read below ``root``.
    Every context, wherever it came from, must hold its Dockerfile.
    """
    with TemporaryDirectory(prefix="buildfarm-ctx-") as scratch:
        out: list[tuple[ImageSource, Path]] = []
        for index, image in enumerate(manifest.images):
            where = f"images[{index}] ({image.name})"
            if prepared is not None and index in prepared:
                directory = prepared[index]
            elif image.path is not None:
                directory = (root / image.path).resolve()
                if not directory.is_dir():
                    raise ManifestError(f"{where}: context directory {image.path!r} does not exist")
            else:
                clone = Path(scratch) / str(index)
                directory = _clone(image, clone, where, policy)
                if not directory.is_relative_to(clone) or not directory.is_dir():
                    raise ManifestError(f"{where}: no directory {image.subdir!r} in that ref")
            check_dockerfile(directory, image, where)
            out.append((image, directory))
        yield out
