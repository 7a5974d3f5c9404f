"""Bring each package's source tree and each image's build context to a local directory.

A tree is a path of the manifest's own directory, a git clone, or (``prepared``, by index) a
directory the API already unpacked from an uploaded tarball: a remote client sends its local
``path`` trees, since the farm cannot read the client's disk.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

from buildfarm.model.errors import ManifestError, TemporaryError
from buildfarm.model.manifest import ImageSource, Manifest, PackageSource, check_dockerfile

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


def _git(args: list[str], cwd: Path, what: str) -> str:
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"},
        )
    except FileNotFoundError as exc:
        raise ManifestError("git is not installed (Debian package: git)") from exc
    except subprocess.TimeoutExpired as exc:
        raise TemporaryError(f"{what}: git {args[0]} took over {GIT_TIMEOUT_SECONDS} s") from exc
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or "").strip().splitlines()[-1:] or ["(no message)"]
        message = f"{what}: git {args[0]} failed: {last[0]}"
        if any(words in (exc.stderr or "").lower() for words in GIT_NETWORK_FAILURES):
            raise TemporaryError(message) from exc
        raise ManifestError(message) from exc
    return result.stdout


MAX_EXTRA_REFS = 8
"""Refs fetched beside the checked-out one (a gbp repository's upstream tag and pristine-tar
branch): a handful, never a whole repository."""


def fetch_refs(url: str, refs: list[str], clone: Path, what: str) -> list[str]:
    """Fetch those of ``refs`` (full names, ``refs/heads/...`` or ``refs/tags/...``) that
    ``url`` has into the same names of ``clone``, one commit deep each; the ones it had.

    A ref the repository lacks is not an error here (the caller says what it needed); a server
    that cannot be reached is, as for :func:`checkout`.
    """
    if len(refs) > MAX_EXTRA_REFS:
        raise ManifestError(f"{what}: more than {MAX_EXTRA_REFS} extra refs asked for")
    for ref in refs:
        if not ref.startswith(("refs/heads/", "refs/tags/")) or ".." in ref or ref.endswith("/"):
            raise ManifestError(f"{what}: {ref!r} is not a branch or tag ref")
    listed = _git(["ls-remote", "--end-of-options", url, *refs], clone, what)
    present = {line.split("\t", 1)[1] for line in listed.splitlines() if "\t" in line}
    found = [ref for ref in refs if ref in present]
    if found:
        specs = [f"+{ref}:{ref}" for ref in found]
        _git(["fetch", "-q", "--no-tags", "--depth", "1", "--end-of-options", url, *specs], clone, what)
    return found


def checkout(url: str, ref: str, clone: Path, what: str) -> None:
    """Check out ``ref`` of the git repository ``url`` (shallow) into the new directory ``clone``;
    a failure is one line naming ``what``."""
    clone.mkdir()
    _git(["init", "-q"], clone, what)
    _git(["fetch", "-q", "--depth", "1", url, ref], clone, what)
    _git(["checkout", "-q", "FETCH_HEAD"], clone, what)


def _clone(source: PackageSource | ImageSource, clone: Path, what: str) -> Path:
    """Check out ``source``'s ref into the empty directory ``clone``; the subdir it names."""
    assert source.git is not None and source.ref is not None
    checkout(source.git, source.ref, clone, what)
    return (clone / source.subdir).resolve()


@contextmanager
def source_directories(
    manifest: Manifest, root: Path, prepared: dict[int, Path] | None = None
) -> Iterator[list[tuple[PackageSource, Path | None]]]:
    """Yield (package, directory with debian/) for each package; clones live until the block ends.
    A package named by a .dsc or a source name has no tree: its directory is None.

    ``prepared`` maps a package's index to a directory already holding its tree (an uploaded
    source tarball, unpacked by the API); other ``path`` packages are read below ``root``.
    """
    with TemporaryDirectory(prefix="buildfarm-src-") as scratch:
        out: list[tuple[PackageSource, Path | None]] = []
        for index, package in enumerate(manifest.packages):
            if prepared is not None and index in prepared:
                out.append((package, prepared[index]))
                continue
            if package.path is None and package.git is None:
                out.append((package, None))
                continue
            if package.path is not None:
                out.append((package, (root / package.path).resolve()))
                continue
            clone = Path(scratch) / str(index)
            what = f"packages[{index}] ({package.describe()})"
            directory = _clone(package, clone, what)
            if not directory.is_relative_to(clone) or not (directory / "debian" / "control").is_file():
                raise ManifestError(f"{what}: no debian/control in {package.subdir!r} of that ref")
            out.append((package, directory))
        yield out


@contextmanager
def context_directories(
    manifest: Manifest, root: Path, prepared: dict[int, Path] | None = None
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
                directory = _clone(image, clone, where)
                if not directory.is_relative_to(clone) or not directory.is_dir():
                    raise ManifestError(f"{where}: no directory {image.subdir!r} in that ref")
            check_dockerfile(directory, image, where)
            out.append((image, directory))
        yield out
