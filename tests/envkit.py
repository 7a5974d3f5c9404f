"""Makers of small real environment and layer tarballs, for the environment cache's tests.

Their bytes follow from what they are asked to make (as mmdebstrap's do with SOURCE_DATE_EPOCH),
so what is tested is the caches' own logic: content addressing, checks, atomic creation.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from buildfarm.environments import EnvironmentSpec


class TarMaker:
    """A real tarball of one file naming the recipe's packages (and ``extra``: a moved mirror)."""

    def __init__(self) -> None:
        self.calls = 0
        self.extra = ""

    def __call__(
        self, spec: EnvironmentSpec, dest: Path, proxy: str | None = None, progress: object = None
    ) -> str:
        self.calls += 1
        data = (" ".join(spec.packages) + self.extra + "\n").encode() * 1000
        with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
            info = tarfile.TarInfo("./var/lib/dpkg/status")
            info.size, info.mtime = len(data), 1700000000
            tar.addfile(info, io.BytesIO(data))
        return "Sat, 01 Jan 2026 00:00:00 UTC"


class LayerMaker:
    """Writes a real tarball of ``size`` bytes naming the call (so each making is told apart)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self.calls = 0

    def __call__(self, dest: Path) -> None:
        self.calls += 1
        data = f"layer {self.calls}\n".encode().ljust(self.size, b".")
        with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
            info = tarfile.TarInfo("./var/lib/dpkg/status")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
