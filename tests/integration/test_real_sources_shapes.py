"""Debian source packages as the unit a step builds: formats, entry kinds, checks, kept inputs.

Each test builds with the host runner (dpkg-source + dpkg-buildpackage, debhelper from the
host): a few seconds each.  The real packages from Debian's archive are built with sbuild in
``test_real_sources_debian.py``.
"""

from __future__ import annotations

import datetime as dt
import http.server
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.local.aptclient import AptClient
from buildfarm.model.debsource import file_sha256
from buildfarm.model.errors import PermanentError, TemporaryError
from buildfarm.model.manifest import load_manifest
from buildfarm.retention import run_sweep
from buildfarm.state.models import BuildInput, Step

from farmkit import drain, finished_build, make_test_context

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOCAL_FETCH = {"fetch_allow_schemes": ["https", "http"], "fetch_allow_hosts": ["127.0.0.1"]}
"""The tests' upstream servers listen on loopback, which the farm refuses unless allowed."""


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[FarmContext]:
    context = make_test_context(tmp_path, f"sqlite:///{tmp_path}/state.db", **LOCAL_FETCH)
    yield context
    context.db.dispose()


class Served:
    """A directory served over HTTP on a free port, stoppable mid-test."""

    def __init__(self, directory: Path) -> None:
        handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(directory), **kw)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Served]]:
    directory = tmp_path / "www"
    directory.mkdir()
    server = Served(directory)
    yield directory, server
    server.stop()


def _quilt_tree(root: Path, version: str = "1.0-1") -> Path:
    """The greet-quilt example and its upstream tarball, copied under ``root``."""
    shutil.copytree(EXAMPLES / "greet-quilt", root / "greet-quilt")
    shutil.copyfile(EXAMPLES / "greet-quilt_1.0.orig.tar.gz", root / "greet-quilt_1.0.orig.tar.gz")
    if version != "1.0-1":
        changelog = root / "greet-quilt" / "debian" / "changelog"
        changelog.write_text(changelog.read_text().replace("(1.0-1)", f"({version})", 1))
    return root / "greet-quilt"


def _manifest(root: Path, entries: str, name: str = "buildfarm.yaml") -> Path:
    manifest = root / name
    manifest.write_text(f"project: proj\nbranch: main\nkind: nightly\npackages:\n{entries}")
    return manifest


def _build(ctx: FarmContext, manifest: Path) -> control.BuildView:
    build_id = submit_build(ctx, load_manifest(manifest), manifest.parent, "alice")
    drain(ctx)
    return control.show_build(ctx, build_id)


def _source_members(ctx: FarmContext, view: control.BuildView, dest: Path) -> list[str]:
    """Unpack the source package the step was given into ``dest``; its file names."""
    with ctx.db.session() as session:
        sha = session.scalars(select(Step.source_sha256).where(Step.build_id == view.id)).one()
    tarball = dest.with_suffix(".tar.gz")
    ctx.store.fetch(sha, tarball)
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
        return sorted(tar.getnames())


def _run_deb(view: control.BuildView, ctx: FarmContext, work: Path, program: str) -> str:
    package = Path(program).name
    deb = next(
        o
        for o in view.steps[0].outputs
        if o["filename"].startswith(f"{package}_") and o["filename"].endswith(".deb")
    )
    ctx.store.fetch(deb["sha256"], work / "p.deb")
    subprocess.run(["dpkg-deb", "-x", str(work / "p.deb"), str(work / "root")], check=True)
    return subprocess.run([str(work / "root" / program)], check=True, capture_output=True, text=True).stdout


def test_quilt_path_with_upstream_tarball_beside_builds_patched(ctx: FarmContext, tmp_path: Path) -> None:
    _quilt_tree(tmp_path / "src")
    view = _build(ctx, _manifest(tmp_path / "src", "  - path: greet-quilt\n"))
    assert view.state == "succeeded", view
    members = _source_members(ctx, view, tmp_path / "given")
    assert members == [
        "greet-quilt_1.0-1.debian.tar.xz",
        "greet-quilt_1.0-1.dsc",
        "greet-quilt_1.0.orig.tar.gz",
    ]
    # the upstream tarball travels as it is (byte-identical), and is a build input kept forever
    assert (tmp_path / "given" / "greet-quilt_1.0.orig.tar.gz").read_bytes() == (
        EXAMPLES / "greet-quilt_1.0.orig.tar.gz"
    ).read_bytes()
    with ctx.db.session() as session:
        assert session.scalars(select(BuildInput.name)).all() == ["greet-quilt_1.0.orig.tar.gz"]
    output = _run_deb(view, ctx, tmp_path, "usr/bin/greet-quilt")
    assert output == "Hello from a 3.0 (quilt) package, patched by debian/patches!\n"


def test_same_source_as_path_dsc_and_dsc_url_keys_the_same(
    ctx: FarmContext, tmp_path: Path, served: tuple[Path, Served]
) -> None:
    _quilt_tree(tmp_path / "src")
    first = _build(ctx, _manifest(tmp_path / "src", "  - path: greet-quilt\n"))
    assert first.state == "succeeded", first
    www, server = served
    _source_members(ctx, first, www / "pool")  # the farm's own .dsc, as a user would dget it
    shutil.copytree(www / "pool", tmp_path / "src" / "dl")
    by_file = _build(ctx, _manifest(tmp_path / "src", "  - dsc: dl/greet-quilt_1.0-1.dsc\n", "f.yaml"))
    by_url = _build(
        ctx, _manifest(tmp_path / "src", f"  - dsc: {server.url}/pool/greet-quilt_1.0-1.dsc\n", "u.yaml")
    )
    for view in (by_file, by_url):
        assert view.steps[0].state == "reused", view
        assert view.steps[0].input_key == first.steps[0].input_key


def test_missing_upstream_tarball_names_the_file_and_where(ctx: FarmContext, tmp_path: Path) -> None:
    tree = _quilt_tree(tmp_path / "src")
    (tree.parent / "greet-quilt_1.0.orig.tar.gz").unlink()
    with pytest.raises(PermanentError) as caught:
        submit_build(
            ctx, load_manifest(_manifest(tmp_path / "src", "  - path: greet-quilt\n")), tmp_path / "src", "a"
        )
    message = str(caught.value)
    assert "greet-quilt_1.0.orig.tar.{gz,bz2,xz,lzma}" in message
    assert f"looked in {tree.parent}" in message


def test_orig_by_url_is_checked_fetched_once_and_kept(
    ctx: FarmContext, tmp_path: Path, served: tuple[Path, Served]
) -> None:
    www, server = served
    tree = _quilt_tree(tmp_path / "src")
    upstream = tree.parent / "greet-quilt_1.0.orig.tar.gz"
    shutil.move(upstream, www / "greet-quilt-1.0.tar.gz")  # upstream's own name
    good = "cafe" * 16
    wrong = _manifest(
        tmp_path / "src",
        f"  - path: greet-quilt\n    orig:\n      - url: {server.url}/greet-quilt-1.0.tar.gz\n"
        f"        sha256: {good}\n",
        "wrong.yaml",
    )
    with pytest.raises(
        PermanentError, match=f"sha256 mismatch: expected {good}, the download has [0-9a-f]{{64}}"
    ):
        submit_build(ctx, load_manifest(wrong), tmp_path / "src", "alice")
    digest = file_sha256(www / "greet-quilt-1.0.tar.gz")
    entry = (
        f"  - path: greet-quilt\n    orig: {{url: {server.url}/greet-quilt-1.0.tar.gz, sha256: {digest}}}\n"
    )
    view = _build(ctx, _manifest(tmp_path / "src", entry, "right.yaml"))
    assert view.state == "succeeded", view
    server.stop()  # the upstream is gone: the next build takes the tarball from the store
    changelog = tree / "debian" / "changelog"
    changelog.write_text(changelog.read_text().replace("(1.0-1)", "(1.0-2)", 1))
    again = _build(ctx, _manifest(tmp_path / "src", entry, "again.yaml"))
    assert again.state == "succeeded" and again.steps[0].state == "succeeded", again


def test_dsc_url_builds_after_the_upstream_is_gone_without_reusable_outputs(
    tmp_path: Path, served: tuple[Path, Served]
) -> None:
    www, server = served
    maker = make_test_context(tmp_path / "maker", f"sqlite:///{tmp_path}/maker.db", **LOCAL_FETCH)
    (tmp_path / "maker").mkdir(exist_ok=True)
    _quilt_tree(tmp_path / "src", "1.0-3")
    made = _build(maker, _manifest(tmp_path / "src", "  - path: greet-quilt\n"))
    _source_members(maker, made, www / "pool")
    maker.db.dispose()

    ctx = make_test_context(tmp_path / "farm", f"sqlite:///{tmp_path}/farm.db", **LOCAL_FETCH)
    manifest = _manifest(tmp_path, f"  - dsc: {server.url}/pool/greet-quilt_1.0-3.dsc\n")
    first = _build(ctx, manifest)
    assert first.state == "succeeded", first
    with ctx.db.session() as session:
        inputs = sorted(session.scalars(select(BuildInput.name)).all())
    assert inputs == [
        "greet-quilt_1.0-3.debian.tar.xz",
        "greet-quilt_1.0-3.dsc",
        "greet-quilt_1.0.orig.tar.gz",
    ]
    server.stop()
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    outputs = [o["sha256"] for o in first.steps[0].outputs]
    assert ctx.store.delete_objects(outputs, older_than=future).deleted == len(outputs)
    shutil.rmtree(ctx.work_root, ignore_errors=True)
    again = _build(ctx, manifest)
    assert again.state == "succeeded" and again.steps[0].state == "succeeded", again
    assert again.steps[0].input_key == first.steps[0].input_key
    ctx.db.dispose()


def test_dsc_checks_checksums_signature_and_reachability(
    ctx: FarmContext, tmp_path: Path, served: tuple[Path, Served]
) -> None:
    www, server = served
    _quilt_tree(tmp_path / "src", "1.0-4")
    made = _build(ctx, _manifest(tmp_path / "src", "  - path: greet-quilt\n"))
    pool = www / "pool"
    _source_members(ctx, made, pool)
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    keys = {}
    for who in ("signer", "other"):
        subprocess.run(
            ["gpg", "--batch", "--homedir", str(gnupg), "--passphrase", "", "--quick-gen-key",
             f"{who}@t.invalid", "ed25519", "sign", "never"],
            check=True, capture_output=True,
        )  # fmt: skip
        armored = subprocess.run(
            ["gpg", "--homedir", str(gnupg), "--armor", "--export", f"{who}@t.invalid"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        (tmp_path / f"{who}.asc").write_text(armored)
        keys[who] = armored
    dsc = pool / "greet-quilt_1.0-4.dsc"
    subprocess.run(
        ["gpg", "--batch", "--homedir", str(gnupg), "--local-user", "signer@t.invalid", "--clearsign",
         "--output", str(dsc.with_suffix(".signed")), str(dsc)],
        check=True, capture_output=True,
    )  # fmt: skip
    dsc.with_suffix(".signed").rename(dsc)
    url = f"{server.url}/pool/greet-quilt_1.0-4.dsc"
    signed = _build(ctx, _manifest(tmp_path, f"  - dsc: {url}\n    signed_by: signer.asc\n", "ok.yaml"))
    assert signed.steps[0].state == "reused"  # signed or not, the same source package
    with pytest.raises(PermanentError, match=r"greet-quilt_1\.0-4\.dsc is not signed by key [0-9A-F]{40}: "):
        submit_build(
            ctx,
            load_manifest(_manifest(tmp_path, f"  - dsc: {url}\n    signed_by: other.asc\n")),
            tmp_path,
            "a",
        )

    tampered = pool / "greet-quilt_1.0-4.debian.tar.xz"
    tampered.write_bytes(tampered.read_bytes() + b"x")
    local = _manifest(tmp_path, "  - dsc: www/pool/greet-quilt_1.0-4.dsc\n", "local.yaml")
    with pytest.raises(
        PermanentError, match=r"sha256 mismatch: the \.dsc says [0-9a-f]{64}, the file has [0-9a-f]{64}"
    ):
        submit_build(ctx, load_manifest(local), tmp_path, "alice")
    missing = _manifest(tmp_path, f"  - dsc: {server.url}/pool/nothing_1.0.dsc\n", "404.yaml")
    with pytest.raises(PermanentError, match="answered HTTP 404"):
        submit_build(ctx, load_manifest(missing), tmp_path, "alice")
    server.stop()
    gone = _manifest(tmp_path, f"  - dsc: {server.url}/pool/other_1.0.dsc\n", "gone.yaml")
    with pytest.raises(TemporaryError, match="cannot be fetched"):
        submit_build(ctx, load_manifest(gone), tmp_path, "alice")


def test_format_1_0_with_diff_gz_and_component_tarballs(ctx: FarmContext, tmp_path: Path) -> None:
    src = tmp_path / "src"
    tree = _quilt_tree(src)
    (tree / "debian" / "source" / "format").write_text("1.0\n")
    shutil.rmtree(tree / "debian" / "patches")
    one_oh = _build(ctx, _manifest(src, "  - path: greet-quilt\n"))
    assert one_oh.state == "succeeded", one_oh
    assert "greet-quilt_1.0-1.diff.gz" in _source_members(ctx, one_oh, tmp_path / "one")

    (tree / "debian" / "source" / "format").write_text("3.0 (quilt)\n")
    changelog = tree / "debian" / "changelog"
    changelog.write_text(changelog.read_text().replace("(1.0-1)", "(1.0-5)", 1))
    component = src / "extra"
    (component / "extra").mkdir(parents=True)
    (component / "extra" / "NOTES").write_text("a component tarball\n")
    subprocess.run(
        ["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-czf",
         str(src / "greet-quilt_1.0.orig-extra.tar.gz"), "-C", str(component), "extra"],
        check=True,
    )  # fmt: skip
    shutil.copytree(component / "extra", tree / "extra")  # unpacked as dpkg-source -x would
    (src / "greet-quilt_1.0.orig-extra.tar.gz.asc").write_text("not checked by the farm: carried\n")
    comp = _build(ctx, _manifest(src, "  - path: greet-quilt\n", "comp.yaml"))
    assert comp.state == "succeeded", comp
    members = _source_members(ctx, comp, tmp_path / "comp")
    assert "greet-quilt_1.0.orig-extra.tar.gz" in members
    assert "greet-quilt_1.0.orig-extra.tar.gz.asc" in members


def test_published_repository_serves_byte_identical_sources(ctx: FarmContext, tmp_path: Path) -> None:
    _quilt_tree(tmp_path / "src")
    view = _build(ctx, _manifest(tmp_path / "src", "  - path: greet-quilt\n"))
    assert view.state == "succeeded", view
    built = tmp_path / "built"
    given = _source_members(ctx, view, built)
    source = ctx.repo.sources("proj", "main")
    assert source.source_line() == "deb-src" + source.line().removeprefix("deb")
    repos = ctx.settings.state_dir / "repos"
    server = Served(repos)
    try:
        line = source.source_line()
        assert line is not None
        apt = AptClient(tmp_path / "apt", line.replace(source.url.split("/proj/")[0], server.url))
        apt.update()
        fetched = apt.source("greet-quilt")
    finally:
        server.stop()
    assert [p.name for p in fetched] == given
    for path in fetched:
        assert path.read_bytes() == (built / path.name).read_bytes()


def test_dsc_urls_and_their_redirects_pass_the_url_policy(tmp_path: Path) -> None:
    """A manifest cannot make the farm fetch from its own host: loopback is refused by default,
    and a redirect from an allowed host to one that is not is refused too (nothing fetched)."""
    strict = make_test_context(tmp_path / "strict", f"sqlite:///{tmp_path}/strict.db")
    manifest = _manifest(tmp_path, "  - dsc: http://127.0.0.1:9/pool/x_1.0.dsc\n", "loop.yaml")
    with pytest.raises(PermanentError, match=r"http:// URLs are not allowed here"):
        submit_build(strict, load_manifest(manifest), tmp_path, "alice")
    strict.db.dispose()

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.2:9/x_1.0.dsc")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ctx = make_test_context(tmp_path / "farm", f"sqlite:///{tmp_path}/farm.db", **LOCAL_FETCH)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/x_1.0.dsc"
        hop = _manifest(tmp_path, f"  - dsc: {url}\n", "hop.yaml")
        with pytest.raises(PermanentError, match="the farm does not fetch from this host"):
            submit_build(ctx, load_manifest(hop), tmp_path, "alice")
    finally:
        server.shutdown()
        server.server_close()
        ctx.db.dispose()


def test_tree_unpacked_beside_its_dsc_keys_like_the_dsc(ctx: FarmContext, tmp_path: Path) -> None:
    """``apt-get source`` / ``dget`` leave the .dsc, its files and the unpacked tree side by side:
    as ``path`` that tree is that source package (same bytes, same key), while a changed tree is
    built with dpkg-source -b, which refuses an upstream change that no patch carries."""
    made = tmp_path / "made"
    _quilt_tree(made, "1.0-7")
    subprocess.run(["dpkg-source", "-b", "greet-quilt"], cwd=made, check=True, capture_output=True)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("greet-quilt_1.0-7.dsc", "greet-quilt_1.0-7.debian.tar.xz", "greet-quilt_1.0.orig.tar.gz"):
        shutil.copyfile(made / name, src / name)
    subprocess.run(
        ["dpkg-source", "-x", "greet-quilt_1.0-7.dsc", "unpacked"], cwd=src, check=True, capture_output=True
    )
    by_dsc = _build(ctx, _manifest(src, "  - dsc: greet-quilt_1.0-7.dsc\n", "dsc.yaml"))
    assert by_dsc.state == "succeeded", by_dsc
    by_path = _build(ctx, _manifest(src, "  - path: unpacked\n", "path.yaml"))
    assert by_path.steps[0].state == "reused" and by_path.steps[0].input_key == by_dsc.steps[0].input_key
    (src / "unpacked" / "greet.c").write_text("int main(void) { return 0; }\n")
    with pytest.raises(PermanentError, match=r"dpkg-source -b failed: .*unexpected upstream changes"):
        submit_build(ctx, load_manifest(_manifest(src, "  - path: unpacked\n", "c.yaml")), src, "alice")


def test_retention_never_deletes_a_build_input(tmp_path: Path) -> None:
    """Build inputs are kept forever: an object recorded as one stays when the only build whose
    step named it expires, while that build's other objects go.  (On the old code the sweep
    deleted it: nothing but the steps named it.)"""
    ctx = make_test_context(tmp_path, f"sqlite:///{tmp_path}/state.db", retention_keep_newest=1)
    upstream = ctx.store.put_bytes(b"an upstream tarball")
    other = ctx.store.put_bytes(b"a source package made from a tree")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    with ctx.db.session() as session:
        for days, source in ((400, upstream.sha256), (390, other.sha256), (1, other.sha256)):
            build = finished_build(
                session, kind="nightly", finished=dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
            )
            session.add(
                Step(
                    build_id=build.id, name="pkg", version="1", origin="t", source_sha256=source,
                    tree_hash="0" * 64, input_key=f"{days:064d}", depends_on=[], state="succeeded", attempt=1,
                )
            )  # fmt: skip
        session.add(
            BuildInput(
                sha256=upstream.sha256,
                size=upstream.size,
                name="p_1.orig.tar.gz",
                origin="t",
                url="",
                stored_at=old,
            )
        )
    report = run_sweep(ctx, dry_run=False, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert len(report.build_ids) == 2 and report.objects == 0, report
    assert ctx.store.has(upstream.sha256)
    assert ctx.store.has(other.sha256)  # the kept newest build names it
    ctx.db.dispose()
