"""The fast ``host`` runner: dpkg-buildpackage on this machine, for packages whose build
dependencies are already installed here (none from the same build) and for quick tests.

It is not a clean environment: use the ``sbuild`` runner for anything that is published for
others.  Its environment identity includes the host's installed packages, so a changed host
never silently reuses outputs built on the old one.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from functools import cache

from buildfarm.model.errors import PermanentError
from buildfarm.model.types import FILE_OUTPUT_SUFFIXES, PACKAGE_SUFFIXES, RunnerKind
from buildfarm.runners.base import StepJob, StepResult
from buildfarm.runners.process import describe_failure, run_streaming
from buildfarm.runners.sourcepkg import unpack_native, unpack_step_source


@cache
def _host_identity() -> str:
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}=${Version}\\n"], capture_output=True, check=True, text=True
    ).stdout
    digest = hashlib.sha256(installed.encode()).hexdigest()[:16]
    return f"host:{platform.machine()}:{digest}"


class HostRunner:
    name: str = RunnerKind.HOST

    def environment_id(self) -> str:
        return _host_identity()

    def run(self, job: StepJob) -> StepResult:
        if shutil.which("dpkg-buildpackage") is None:
            raise PermanentError("dpkg-buildpackage is not installed (Debian packages: dpkg-dev debhelper)")
        source = job.workdir / "src"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEB_", "DPKG_"))}
        env["LC_ALL"] = "C.UTF-8"
        dsc = unpack_step_source(job.source_tarball, job.workdir / "dsc")
        if dsc is not None and unpack_native(dsc, source):
            job.log(f"buildfarm: {dsc.name} unpacked in process, as dpkg-source -x does (a native package)")
        elif dsc is not None:  # the source package, unpacked (and patched) by dpkg-source itself
            outcome = run_streaming(
                ["dpkg-source", "-x", str(dsc), str(source)],
                cwd=job.workdir,
                log=job.log,
                cancel=job.cancel,
                timeout_seconds=job.timeout_seconds,
                env=env,
            )
            if outcome.returncode != 0 or outcome.cancelled or outcome.timed_out:
                return StepResult(False, [], describe_failure("dpkg-source -x", outcome, job.timeout_seconds))
        else:
            (job.workdir / "dsc").rename(source)
        outcome = run_streaming(
            ["dpkg-buildpackage", "-b", "-uc", "-us"],
            cwd=source,
            log=job.log,
            cancel=job.cancel,
            timeout_seconds=job.timeout_seconds,
            env=env,
        )
        if outcome.returncode != 0 or outcome.cancelled or outcome.timed_out:
            failure = describe_failure("dpkg-buildpackage", outcome, job.timeout_seconds)
            return StepResult(False, [], failure, killed_by=outcome.killed_by)
        outputs = sorted(p for p in job.workdir.iterdir() if p.name.endswith(FILE_OUTPUT_SUFFIXES))
        if not any(p.name.endswith(PACKAGE_SUFFIXES) for p in outputs):
            return StepResult(False, [], "dpkg-buildpackage succeeded but produced no .deb")
        return StepResult(True, outputs)
