"""Backups of release builds (:mod:`.run`), their verification, and the restore that proves them
(:mod:`.restore`); what a backup holds is described in :mod:`.manifest` and :mod:`.catalog`.  The
target is handed in (``ctx.parts.backup_target()``: :mod:`buildfarm.wiring`).

What other packages may use is named here; the modules behind it are private to the package.
"""

from buildfarm.backup.manifest import BackupReport, Progress, RestoreReport, VerifyReport
from buildfarm.backup.restore import restore_backup
from buildfarm.backup.run import describe_objects, run_backup, verify_backup

__all__ = [
    "BackupReport",
    "Progress",
    "RestoreReport",
    "VerifyReport",
    "describe_objects",
    "restore_backup",
    "run_backup",
    "verify_backup",
]
