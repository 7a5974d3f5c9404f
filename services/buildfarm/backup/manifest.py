"""What a backup is on its target: its manifest, the progress callback and the three reports.

Shared by :mod:`buildfarm.backup.run` (backup, verify) and :mod:`buildfarm.backup.restore`, so
that neither imports the other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from buildfarm.backends.base import BackupTarget
from buildfarm.model.errors import NotFoundError, PermanentError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: called as a phase advances (the CLI draws bars from it)."""


def no_progress(phase: str, done: int, total: int) -> None:
    return None


@dataclass
class BackupReport:
    target: str
    builds: list[int]
    objects: int  # objects the backup consists of (catalogue included)
    bytes: int
    copied_objects: int  # of them, copied by this run
    copied_bytes: int
    logs: int
    images: int
    catalogue_sha256: str
    seconds: float


@dataclass
class VerifyReport:
    target: str
    created_at: str
    objects: int
    bytes: int
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    what: dict[str, str] = field(default_factory=dict)  # each corrupt or missing object, in words

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


@dataclass
class RestoreReport:
    target: str
    builds: list[int]
    steps: int
    objects: int
    bytes: int
    logs: int
    images: int
    latest: dict[str, int]  # "<project>/<branch>" -> the build latest points at
    seconds: float


def read_manifest(target: BackupTarget) -> dict[str, Any]:
    raw = target.get_document(MANIFEST)
    if raw is None:
        raise NotFoundError(f"no backup in {target.where} (no {MANIFEST}): run `buildfarm backup run`")
    try:
        manifest: dict[str, Any] = json.loads(raw)
        if not isinstance(manifest["catalogue"]["sha256"], str) or not isinstance(manifest["objects"], dict):
            raise TypeError("catalogue or objects of the wrong type")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PermanentError(f"{MANIFEST} in {target.where} is unreadable: {exc}") from exc
    return manifest
