"""The ``unshare`` runner's overlay is used only where it works: tmpfs keeps the ``user.*``
attributes of overlay's ``userxattr`` only from Linux 6.6 (Debian 12 runs 6.1), and without them
dpkg cannot make again a directory of the tarball it removed.  The probe mounts a step's overlay
in a user namespace as a step does; a runner whose probe fails unpacks per step instead."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.model.errors import PermanentError
from buildfarm.runners import unshare
from buildfarm.runners.unshare import UnshareRunner, overlay_works

from nonrootkit import require_tmpfs_user_xattrs


def _namespaces_here() -> None:
    if shutil.which("unshare") is None or not Path("/dev/shm").is_dir():
        pytest.skip("needs util-linux unshare and a tmpfs at /dev/shm")
    try:
        unshare.subordinate_ids()
    except PermanentError as exc:
        pytest.skip(f"this user has no subordinate ids: {exc}")


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    path = Path("/dev/shm") / f"buildfarm-probe-test-{os.getpid()}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_probe_tells_a_working_overlay_from_one_dpkg_cannot_use(shm_dir: Path) -> None:
    _namespaces_here()
    require_tmpfs_user_xattrs()
    assert overlay_works(shm_dir)  # this machine's kernel keeps user xattrs on tmpfs
    # without userxattr (what an overlay on an older tmpfs amounts to) a removed directory of
    # the lower tree cannot be made again: the probe must say no
    assert not overlay_works(shm_dir, "index=off")
    assert list(shm_dir.iterdir()) == []  # the probe leaves nothing behind


def test_a_runner_whose_overlay_fails_unpacks_per_step_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[Path] = []

    def no_overlay(tmpdir: Path, options: str = "") -> bool:
        probes.append(tmpdir)
        return False

    monkeypatch.setattr(unshare, "overlay_works", no_overlay)
    runner = UnshareRunner(None, "bookworm", tmp_path / "chroots")
    assert runner.trees is not None  # nothing probed when the runner is made (API processes make them)
    lines: list[str] = []
    attempt = tmp_path / "chroots" / "1-a-1"
    assert runner._usable_trees(attempt, lines.append) is None
    assert runner._usable_trees(attempt, lines.append) is None
    assert probes == [tmp_path / "chroots"]
    assert len(lines) == 1 and "each step unpacks its tarball" in lines[0]
