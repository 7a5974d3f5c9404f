"""A backup carries the farm's build inputs, rows and objects, so a restored farm never downloads them.

A release is built from a ``dsc:`` URL served on localhost (the .dsc, upstream tarball and debian
tarball become build inputs, issue 12), backed up to a directory and restored into a fresh farm
(new database, state directory and artifact store).  The restored farm has every
``build_inputs`` row and object; with the upstream server stopped and the restored outputs gone,
the same manifest builds again: the .dsc's checksum is known only from its row, so without the
rows the farm would have to download it.  The restored repository serves the release's source
package too (``apt-get source``).  Local profile, host runner; ~10 s on an idle machine.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

from sqlalchemy import select

from buildfarm.backup import restore_backup, run_backup
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.local.aptclient import AptClient
from buildfarm.model.manifest import load_manifest
from buildfarm.state.models import BuildInput

from farmkit import drain, make_test_context
from httpkit import Served, serving_repos

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
LOCAL_FETCH = {"fetch_allow_schemes": ["https", "http"], "fetch_allow_hosts": ["127.0.0.1"]}


def _farm(root: Path, backup: Path) -> FarmContext:
    root.mkdir(parents=True)
    return make_test_context(root, f"sqlite:///{root}/state.db", backup_target=str(backup), **LOCAL_FETCH)


def _inputs(ctx: FarmContext) -> list[tuple[str, str, str, str, int]]:
    with ctx.db.session() as session:
        rows = session.execute(
            select(BuildInput.name, BuildInput.sha256, BuildInput.origin, BuildInput.url, BuildInput.size)
        )
        return sorted(tuple(row) for row in rows)  # type: ignore[misc]


def _build(ctx: FarmContext, manifest: Path) -> control.BuildView:
    build_id = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    drain(ctx)
    return control.show_build(ctx, build_id)


def test_restored_farm_keeps_its_build_inputs_and_builds_without_the_upstream(tmp_path: Path) -> None:
    pool = tmp_path / "www" / "pool"
    pool.mkdir(parents=True)
    shutil.copytree(EXAMPLES / "greet-quilt", pool / "greet-quilt")
    shutil.copyfile(EXAMPLES / "greet-quilt_1.0.orig.tar.gz", pool / "greet-quilt_1.0.orig.tar.gz")
    subprocess.run(["dpkg-source", "-b", "greet-quilt"], cwd=pool, check=True, capture_output=True)
    upstream = Served(tmp_path / "www")
    manifest = tmp_path / "buildfarm.yaml"
    manifest.write_text(
        "project: proj\nbranch: main\nkind: release\npackages:\n"
        f"  - dsc: http://127.0.0.1:{upstream.port}/pool/greet-quilt_1.0-1.dsc\n"
    )
    backup = tmp_path / "backup"
    try:
        old = _farm(tmp_path / "old", backup)
        first = _build(old, manifest)
        assert first.state == "succeeded", first
        kept = _inputs(old)
        assert [row[0] for row in kept] == [
            "greet-quilt_1.0-1.debian.tar.xz",
            "greet-quilt_1.0-1.dsc",
            "greet-quilt_1.0.orig.tar.gz",
        ]
        run_backup(old)
        old.db.dispose()
    finally:
        upstream.stop()  # the upstream is gone from here on

    new = _farm(tmp_path / "new", backup)
    restore_backup(new)
    assert _inputs(new) == kept
    assert all(new.store.has(sha256) for _, sha256, *_ in kept)
    with serving_repos(new.settings.state_dir / "repos") as repos:
        line = new.repo.sources("proj", "main").source_line()
        assert line is not None
        apt = AptClient(
            tmp_path / "apt",
            line.replace(new.settings.repository.url.rstrip("/"), f"http://127.0.0.1:{repos.server_port}"),
        )
        apt.update()
        fetched = {path.name: path.read_bytes() for path in apt.source("greet-quilt")}
    assert fetched == {name: (pool / name).read_bytes() for name, *_ in kept}
    # Nothing reusable: the restored outputs are gone, so the step is built again from the inputs.
    outputs = [o["sha256"] for o in control.show_build(new, first.id).steps[0].outputs]
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert new.store.delete_objects(outputs, older_than=future).deleted == len(outputs)
    again = _build(new, manifest)
    assert again.state == "succeeded" and again.steps[0].state == "succeeded", again
    assert not again.steps[0].reused_from
    assert again.steps[0].input_key == first.steps[0].input_key
    assert _inputs(new) == kept  # nothing fetched anew
    new.db.dispose()
