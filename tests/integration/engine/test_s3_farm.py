"""The engine with its artifacts on S3 (a real moto S3 server), chosen by settings as in
production: sources, outputs and logs go to the bucket; a re-run reuses them; apt gets the
packages byte for byte from what the bucket holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildfarm.backends.s3 import S3ArtifactStore
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.model.errors import PermanentError
from buildfarm.model.manifest import load_manifest
from buildfarm.model.settings import load_settings
from buildfarm.wiring import check_backends, make_store

from debpkgs import make_package, write_manifest
from farmkit import drain, make_test_context
from s3kit import ACCESS_KEY, SECRET_KEY, MotoS3, running_moto_s3


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with running_moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def ctx(tmp_path: Path, moto: MotoS3) -> Iterator[FarmContext]:
    s3 = {
        **moto.settings(),
    }
    context = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", **s3)
    context.store = make_store(context.settings)
    check_backends(context.settings)
    yield context
    context.db.dispose()


def test_build_on_s3_reuses_and_publishes_the_bucket_bytes(
    ctx: FarmContext, moto: MotoS3, tmp_path: Path
) -> None:
    assert isinstance(ctx.store, S3ArtifactStore)
    src = tmp_path / "src"
    make_package(src, "s3-lib", build="echo compiling s3-lib")
    make_package(src, "s3-tool", build_depends=("s3-lib",))
    manifest = write_manifest(src, ["s3-lib", "s3-tool"])
    first = submit_build(ctx, load_manifest(manifest), src, "alice")
    drain(ctx)
    view = control.show_build(ctx, first)
    assert view.state == "succeeded", view
    bucket = ctx.settings.storage.s3_bucket
    objects = moto.object_names(bucket, "sha256/")
    for step in view.steps:
        for output in step.outputs:
            assert f"sha256/{output['sha256'][:2]}/{output['sha256']}" in objects
    log, _ = ctx.store.read_log(f"logs/{first}/s3-lib/1.log")
    assert b"compiling s3-lib" in log
    assert view.steps[0].log and view.steps[0].log.startswith("http://")  # a presigned URL

    again = submit_build(ctx, load_manifest(manifest), src, "alice")
    drain(ctx)
    assert {s.state for s in control.show_build(ctx, again).steps} == {"reused"}
    assert moto.object_names(bucket, "sha256/") == objects  # nothing stored twice

    published = ctx.settings.state_dir / "repos" / "proj" / "main" / "latest"
    for step in view.steps:
        deb = next(o for o in step.outputs if o["filename"].endswith(".deb"))
        data = (published / deb["filename"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == deb["sha256"]


def test_missing_settings_and_bucket_are_one_line(tmp_path: Path, moto: MotoS3) -> None:
    with pytest.raises(PermanentError, match="s3_endpoint is missing"):
        make_store(load_settings(state_dir=tmp_path, artifacts="s3"))
    with pytest.raises(PermanentError, match="setting s3_access_key is missing"):
        make_store(load_settings(state_dir=tmp_path, artifacts="s3", s3_endpoint=moto.endpoint))
    key_file = tmp_path / "key"
    key_file.write_text("secret\n")
    key_file.chmod(0o644)
    with pytest.raises(PermanentError, match="readable by others: chmod 600"):
        make_store(
            load_settings(
                state_dir=tmp_path,
                artifacts="s3",
                s3_endpoint=moto.endpoint,
                s3_access_key_file=key_file,
                s3_secret_key=SECRET_KEY,
            )
        )
    as_url = load_settings(
        state_dir=tmp_path,
        artifacts="s3",
        s3_endpoint=f"http://{moto.endpoint}",
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,
        s3_bucket=moto.new_bucket(),
    )
    make_store(as_url).check()  # the chart's URL form: http -> no TLS
    with pytest.raises(PermanentError, match="does not exist"):
        check_backends(
            load_settings(
                state_dir=tmp_path,
                artifacts="s3",
                s3_endpoint=moto.endpoint,
                s3_secure=False,
                s3_bucket="no-such-bucket",
                s3_access_key=ACCESS_KEY,
                s3_secret_key=SECRET_KEY,
            )
        )
