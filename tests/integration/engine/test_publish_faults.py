"""Publishing onto a read-only or full disk: the claim is released, the build says why in one line,
publishing tries again after a bounded pause and succeeds once the fault clears; nothing is left
half-published; staging waits the same way.  The faults are real: a small tmpfs mounted over the
local repository's root (remounted read-only, or filled up), unmounted at teardown.  ~3 s a case
(one or two host builds each).
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from buildfarm.engine import control
from buildfarm.engine.advance import PUBLISH_CLAIM_SECONDS, advance_build, repository_fault
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.model.errors import PermanentError, TemporaryError
from buildfarm.model.manifest import load_manifest
from buildfarm.state.models import Build, utcnow

from debpkgs import make_package, write_manifest
from farmkit import drain, make_test_context


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[FarmContext]:
    context = make_test_context(
        tmp_path,
        f"sqlite:///{tmp_path / 'state.db'}",
        repository_retry_min_seconds=0.01,  # the pause before the next attempt: not waited for here
        repository_retry_max_seconds=0.01,
    )
    yield context
    context.db.dispose()


@pytest.fixture
def repo_mount(ctx: FarmContext) -> Iterator[Path]:
    """A 1 MiB tmpfs over the repository root, always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root = ctx.settings.state_dir / "repos"
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def _build_until_publish(ctx: FarmContext, tmp_path: Path) -> int:
    src = tmp_path / "src"
    make_package(src, "fragile")
    build_id = submit_build(ctx, load_manifest(write_manifest(src, ["fragile"])), src, "alice")
    drain(ctx)  # builds the step, then meets the fault at publish
    return build_id


def _assert_waits(ctx: FarmContext, build_id: int, reason: str) -> None:
    view = control.show_build(ctx, build_id)
    assert view.state == "publishing", view
    error = view.error or ""
    assert error.startswith("publishing waits (next attempt in") and reason in error, error
    assert "\n" not in error
    with ctx.db.session() as session:
        claimed_at = session.get_one(Build, build_id).publish_claimed_at
    assert claimed_at is not None
    # released: free again after the short pause, not after PUBLISH_CLAIM_SECONDS
    assert (utcnow() - claimed_at.replace(tzinfo=dt.UTC)).total_seconds() > PUBLISH_CLAIM_SECONDS - 5


def _assert_nothing_half_published(root: Path) -> None:
    branch = root / "proj" / "main"
    left = sorted(p.name for p in (branch / "builds").iterdir()) if (branch / "builds").is_dir() else []
    assert left == [], left
    assert not (branch / "latest").exists()


def _publish_again(ctx: FarmContext, build_id: int) -> control.BuildView:
    """What the reaper's next round does for a build in ``publishing`` (its pause is 0.01 s)."""
    for _ in range(50):  # bounded: the claim frees after 0.01 s
        advance_build(ctx, build_id)
        view = control.show_build(ctx, build_id)
        if view.state != "publishing":
            return view
    raise AssertionError("publishing did not resume")


def test_read_only_repository_waits_then_publishes(
    ctx: FarmContext, tmp_path: Path, repo_mount: Path
) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(repo_mount)], check=True)
    build_id = _build_until_publish(ctx, tmp_path)
    _assert_waits(ctx, build_id, "Read-only file system")
    _assert_nothing_half_published(repo_mount)
    subprocess.run(["mount", "-o", "remount,rw", str(repo_mount)], check=True)
    view = _publish_again(ctx, build_id)
    assert (view.state, view.error) == ("succeeded", None), view
    assert (repo_mount / "proj" / "main" / "latest" / "Packages").read_text().count("Package: fragile\n") == 1


def test_full_repository_waits_cleans_up_then_publishes(
    ctx: FarmContext, tmp_path: Path, repo_mount: Path
) -> None:
    filler = repo_mount / "filler"
    with filler.open("wb", buffering=0) as handle, pytest.raises(OSError) as full:
        for _ in range(4096):  # bounded: 4 MiB > the 1 MiB tmpfs
            handle.write(b"\0" * 1024)
    assert full.value.errno == errno.ENOSPC
    build_id = _build_until_publish(ctx, tmp_path)
    _assert_waits(ctx, build_id, "No space left on device")
    _assert_nothing_half_published(repo_mount)
    assert not [p for p in (repo_mount / "proj" / "main" / "builds").glob(".tmp-*")]  # temp tree removed
    assert not list(ctx.work_root.glob("publish-*"))
    filler.unlink()
    view = _publish_again(ctx, build_id)
    assert (view.state, view.error) == ("succeeded", None), view


def test_read_only_repository_holds_staging_then_stages(
    ctx: FarmContext, tmp_path: Path, repo_mount: Path
) -> None:
    src = tmp_path / "src"
    make_package(src, "base-lib")
    make_package(src, "tool", build_depends=("base-lib",))
    subprocess.run(["mount", "-o", "remount,ro", str(repo_mount)], check=True)
    build_id = submit_build(ctx, load_manifest(write_manifest(src, ["base-lib", "tool"])), src, "alice")
    drain(ctx)  # builds base-lib, then cannot stage it for tool
    view = control.show_build(ctx, build_id)
    assert {s.name: s.state for s in view.steps} == {"base-lib": "succeeded", "tool": "pending"}
    error = view.error or ""
    assert error.startswith("staging waits for the repository") and "Read-only file system" in error, error
    subprocess.run(["mount", "-o", "remount,rw", str(repo_mount)], check=True)
    advance_build(ctx, build_id)  # what the reaper's next round does
    drain(ctx)
    view = control.show_build(ctx, build_id)
    assert (view.state, view.error) == ("succeeded", None), view


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/r/x"),
            TemporaryError,
            "No space left on device (/r/x)",
        ),
        (OSError(errno.EROFS, "Read-only file system"), TemporaryError, "Read-only file system"),
        (ConnectionResetError(104, "reset by peer"), TemporaryError, "ConnectionResetError"),
        (PermissionError(errno.EACCES, "Permission denied", "/r"), PermanentError, "Permission denied (/r)"),
        (requests.ConnectionError("Max retries exceeded"), TemporaryError, "ConnectionError: Max retries"),
        (KeyError("bug"), PermanentError, "unexpected KeyError"),
    ],
)
def test_repository_faults_are_classified(exc: Exception, kind: type, text: str) -> None:
    fault = repository_fault(exc)
    assert isinstance(fault, kind) and text in str(fault), fault
