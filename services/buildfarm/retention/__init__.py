"""Retention: which builds expire (:mod:`.expiry`) and the sweep that deletes them from every
store together (:mod:`.sweep`); the policy itself is pure data (:mod:`buildfarm.model.retention`).

A sweep answers with the API's wire models (``SweepReportOut``, ``StorageReportOut``). What
other packages may use is named here; the modules behind it are private to the package.
"""

from buildfarm.retention.expiry import Selection, select_expired
from buildfarm.retention.sweep import (
    Progress,
    record_upload,
    run_sweep,
    storage_report,
)

__all__ = [
    "Progress",
    "Selection",
    "record_upload",
    "run_sweep",
    "select_expired",
    "storage_report",
]
