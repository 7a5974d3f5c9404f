"""Running test code as an unprivileged user of this machine (``bfbuilder``), for the paths a
non-root worker takes and a farm started as root never does (user namespaces mapped onto the
user's subordinate ids).  The tests skip, with the reason, where the machine cannot."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

USER = "bfbuilder"


def run_as(user: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def unprivileged_user() -> str:
    """The user to run as: this one when the tests run unprivileged, else ``bfbuilder``."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    for tool in ("runuser", "useradd", "newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: cannot run the layer maker as an unprivileged user")
    try:
        pwd.getpwnam(USER)
    except KeyError:  # useradd gives a new user its subordinate id ranges (login.defs SUB_UID_*)
        subprocess.run(["useradd", "--create-home", "--comment", "buildfarm tests", USER], check=True)
    for ids in ("/etc/subuid", "/etc/subgid"):
        if not any(line.startswith(f"{USER}:") for line in Path(ids).read_text().splitlines()):
            pytest.skip(f"{USER} has no subordinate id range in {ids} (usermod --add-subuids/--add-subgids)")
    return USER


def python_for(user: str) -> str:
    """An interpreter ``user`` may run that is this one's version (the checkout's packages are
    compiled for it): this one, unless it lives in a directory private to its owner."""
    wanted = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (sys.executable, shutil.which(f"python{wanted}"), "/usr/bin/python3"):
        if candidate and os.geteuid() != 0:
            return candidate
        if candidate and run_as(
            user, candidate, "-c", "import sys; print(sys.version[:4])"
        ).stdout.startswith(wanted):
            return candidate
    pytest.skip(f"no python{wanted} that {user} may run")


def require_tmpfs_user_xattrs() -> None:
    """Skip where tmpfs keeps no user.* extended attributes (Linux before 6.6, Debian 12's 6.1):
    an overlay with userxattr in a user namespace cannot work on /dev/shm there, and the runner
    falls back to unpacking per step (which the tests of the fallback check)."""
    release = os.uname().release.split("-", 1)[0].split(".")
    try:
        version = (int(release[0]), int(release[1]))
    except (IndexError, ValueError):
        return  # a kernel release we cannot read: let the test find out
    if version < (6, 6):
        pytest.skip(f"tmpfs keeps user xattrs from Linux 6.6; this kernel is {os.uname().release}")
