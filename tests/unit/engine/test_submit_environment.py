"""A submit that finds no build environment answers "try again" and hands the making to a worker.

Making one takes minutes of mmdebstrap: inside an API request it would hang the submit (and the
API worker) that long.  The runner here is the real sbuild runner over an empty environment cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from buildfarm.engine.submit import submit_build
from buildfarm.environments import EnvironmentCache, EnvironmentSpec
from buildfarm.model.manifest import load_manifest
from buildfarm.runners.base import EnvironmentNotReady
from buildfarm.runners.sbuild import SbuildRunner
from buildfarm.state.models import Build

from debpkgs import make_package, write_manifest
from farmkit import dispatcher, make_test_context


def test_submit_without_an_environment_asks_a_worker_and_records_nothing(tmp_path: Path) -> None:
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'state.db'}")
    made: list[EnvironmentSpec] = []

    def maker(spec: EnvironmentSpec, dest: Path, proxy: str | None = None, progress: object = None) -> str:
        made.append(spec)
        raise AssertionError("an environment was made inside the submit")

    spec = EnvironmentSpec("bookworm", "amd64", "http://deb.debian.org/debian", ("debhelper",))
    cache = EnvironmentCache(tmp_path / "environments", maker=maker)
    ctx.__dict__["runner"] = SbuildRunner(None, "bookworm", environments=cache, spec=spec)
    src = tmp_path / "src"
    make_package(src, "hello")
    try:
        with pytest.raises(EnvironmentNotReady, match="submit again"):
            submit_build(ctx, load_manifest(write_manifest(src, ["hello"])), src, "alice")
        assert made == [] and dispatcher(ctx).environments_asked == 1
        with ctx.db.session() as session:
            assert session.scalar(select(func.count()).select_from(Build)) == 0
    finally:
        ctx.db.dispose()
