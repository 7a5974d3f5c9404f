"""Bring each package's source tree to a local directory: a path of the manifest, or a git clone."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

from buildfarm.model.errors import ManifestError, TemporaryError
from buildfarm.model.manifest import Manifest, PackageSource

GIT_TIMEOUT_SECONDS = 300
"""A clone slower than 5 minutes is stuck (or enormous); fail it rather than hang a submit."""


def _git(args: list[str], cwd: Path, what: str) -> None:
    try:
        subprocess.run(
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
        raise ManifestError(f"{what}: git {args[0]} failed: {last[0]}") from exc


@contextmanager
def source_directories(
    manifest: Manifest, root: Path, prepared: dict[int, Path] | None = None
) -> Iterator[list[tuple[PackageSource, Path]]]:
    """Yield (package, directory with debian/) for each package; clones live until the block ends.

    ``prepared`` maps a package's index to a directory already holding its tree (an uploaded
    source tarball, unpacked by the API); other ``path`` packages are read below ``root``.
    """
    with TemporaryDirectory(prefix="buildfarm-src-") as scratch:
        out: list[tuple[PackageSource, Path]] = []
        for index, package in enumerate(manifest.packages):
            if prepared is not None and index in prepared:
                out.append((package, prepared[index]))
                continue
            if package.path is not None:
                out.append((package, (root / package.path).resolve()))
                continue
            assert package.git is not None and package.ref is not None
            clone = Path(scratch) / str(index)
            what = f"packages[{index}] ({package.describe()})"
            clone.mkdir()
            _git(["init", "-q"], clone, what)
            _git(["fetch", "-q", "--depth", "1", package.git, package.ref], clone, what)
            _git(["checkout", "-q", "FETCH_HEAD"], clone, what)
            directory = (clone / package.subdir).resolve()
            if not directory.is_relative_to(clone) or not (directory / "debian" / "control").is_file():
                raise ManifestError(f"{what}: no debian/control in {package.subdir!r} of that ref")
            out.append((package, directory))
        yield out
