"""Where the ``unshare`` runner (the local profile's default) cannot work as it should, the user
gets one line saying why and what to do: from ``buildfarm start`` before anything starts, and
from a node's first step (a farm started before the machine changed).  The ``sbuild`` runner
(``--chroot-mode=unshare``) needs user namespaces as much and says so the same way.

The machines are real, made in namespaces of the test's own: user namespaces switched off is
``user.max_user_namespaces`` 0 in a user namespace (a per-namespace limit its root may lower);
a chroot root where overlay cannot keep its attributes is a ramfs (no xattrs at all, as tmpfs
before Linux 6.6 has no user ones) mounted in a private mount namespace; a working one is
/dev/shm on this machine's kernel, probed as ``buildfarm start`` does (umask 077).  No
subordinate ids is tests/integration/runners/test_unshare_nonroot.py's.  ~15 s at load 10 on
2 cores (five interpreters, three overlay probes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buildfarm.runners.base import chroot_root

from nonrootkit import require_tmpfs_user_xattrs

NO_USERNS = (
    "the unshare runner cannot make a user namespace here (unshare: unshare failed: No space left on "
    "device): user.max_user_namespaces is 0 here (sysctl -w user.max_user_namespaces=15000); sbuild's "
    "unshare mode needs one too, the host runner (--runner host) builds without"
)

NO_USERNS_SBUILD = (
    "the sbuild runner cannot make a user namespace here (unshare: unshare failed: No space left on "
    "device): user.max_user_namespaces is 0 here (sysctl -w user.max_user_namespaces=15000); it runs "
    "sbuild --chroot-mode=unshare, as the unshare runner needs one too, the host runner (--runner host) "
    "builds without"
)

FIRST_STEP = """
import sys
from pathlib import Path
from buildfarm.model.errors import PermanentError
from buildfarm.runners.base import StepJob
from buildfarm.runners.sbuild import SbuildRunner
from buildfarm.runners.unshare import UnshareRunner

if sys.argv[1] == "sbuild":
    runner = SbuildRunner(Path("/nonexistent.tar"), "bookworm")
else:
    runner = UnshareRunner(Path("/nonexistent.tar"), "bookworm", overlay=False)
job = StepJob(1, "x", 1, Path("/nonexistent.tar.gz"), Path("/nonexistent"), [], print)
try:
    runner.run(job)
except PermanentError as exc:
    print(exc)
"""

START_NOTES = """
import json, os, sys
from pathlib import Path
from buildfarm.local.farm import _runner_warnings
from buildfarm.model.settings import load_settings

state, tmpdir = Path(sys.argv[1]), Path(sys.argv[2])
os.umask(0o077)  # as `buildfarm start` runs: what it makes is its owner's alone
print(json.dumps({
    runner: _runner_warnings(load_settings(state_dir=state, sbuild_tmpdir=tmpdir, runner=runner))
    for runner in ("unshare", "sbuild")
}))
"""


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDFARM_")}
    return env | {"BUILDFARM_STATE_DIR": str(state)}


def _without_user_namespaces(*command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``command`` as root of a user namespace whose own may make no more user namespaces."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip(
            "checks as root (root's subordinate ids), in a user namespace of its own: needs root and unshare"
        )
    limit = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", limit, "sh", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("options", "line"),
    [([], NO_USERNS), (["--runner", "sbuild"], NO_USERNS_SBUILD)],
    ids=["default-unshare", "sbuild"],
)
def test_start_without_user_namespaces_says_why_in_one_line_and_starts_nothing(
    tmp_path: Path, options: list[str], line: str
) -> None:
    """No ``--runner``: the settings' default is unshare; sbuild's unshare chroot mode needs user
    namespaces as much. Either is checked before the farm starts."""
    state = tmp_path / "state"
    done = _without_user_namespaces(sys.executable, "-m", "buildfarm_cli", "start", *options, env=_env(state))
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"error: {line}"]
    assert not (state / "farm.json").exists() and not (state / "run").exists()  # nothing started


@pytest.mark.parametrize(("runner", "line"), [("unshare", NO_USERNS), ("sbuild", NO_USERNS_SBUILD)])
def test_a_nodes_first_step_without_user_namespaces_fails_with_the_same_line(
    tmp_path: Path, runner: str, line: str
) -> None:
    done = _without_user_namespaces(sys.executable, "-c", FIRST_STEP, runner, env=_env(tmp_path / "state"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == line


def test_start_notes_a_chroot_root_where_the_overlay_cannot_work(tmp_path: Path) -> None:
    """Steps then unpack their tarball each (the runner's log says so too): a note, not an error;
    the sbuild runner has no overlay and is not probed."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounts a ramfs in a mount namespace of its own: needs root and unshare")
    ramfs, state = tmp_path / "ramfs", tmp_path / "state"
    ramfs.mkdir()
    mount = 'mount -t ramfs ramfs "$1" && shift && exec "$@"'
    notes = [sys.executable, "-c", START_NOTES, str(state), str(ramfs)]
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh", str(ramfs), *notes],
        env=_env(state),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    chroots = chroot_root(ramfs, state)
    assert json.loads(done.stdout) == {
        "unshare": [
            f"the unshare runner finds no overlay with userxattr in a user namespace under {chroots} "
            "(tmpfs keeps user xattrs from Linux 6.6): each step unpacks its tarball, a few seconds "
            "more per step (BUILDFARM_SBUILD_TMPDIR on a disk filesystem such as ext4 keeps them)"
        ],
        "sbuild": [],
    }
    assert list(ramfs.iterdir()) == []  # the ramfs went with its namespace


def test_start_notes_nothing_where_the_overlay_works(tmp_path: Path) -> None:
    """tmpfs on this machine's kernel keeps user xattrs: no note, though ``buildfarm start`` (umask
    077) makes the chroot root before any node does."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or not Path("/dev/shm").is_dir():
        pytest.skip("probes an overlay in /dev/shm as root's subordinate ids: needs root, unshare, /dev/shm")
    require_tmpfs_user_xattrs()
    shm, state = Path("/dev/shm") / f"buildfarm-preflight-test-{os.getpid()}", tmp_path / "state"
    shm.mkdir()
    shm.chmod(0o1777)  # as /dev/shm itself: the chroot root is made in it
    try:
        done = subprocess.run(
            [sys.executable, "-c", START_NOTES, str(state), str(shm)],
            env=_env(state),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"unshare": [], "sbuild": []}
        assert [p.name for p in shm.iterdir()] == [chroot_root(shm, state).name]  # the probe left none
        assert list(chroot_root(shm, state).iterdir()) == []
    finally:
        shutil.rmtree(shm, ignore_errors=True)
