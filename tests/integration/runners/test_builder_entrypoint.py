"""The in-pod build entrypoint, run for real: buildfarm-step in an unshare chroot of the builder
tarball (the package-builder image's own filesystem), against moto's S3 server, with presigned
URLs made by the real S3ArtifactStore; the worker's side checks what it uploaded.

moto checks neither presigned signatures nor expiry, so what is tested here is the entrypoint's
own checks (sha256 of the source, safe unpacking, exit codes, the archive) and the worker's
unpack_outputs. One chroot is unpacked (onto tmpfs when it can) and shared by every test: the
build dependencies installed by one test stay for the next, as they would not in a pod.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from buildfarm.backends.s3 import S3ArtifactStore
from buildfarm.model.errors import NotFoundError, PermanentError
from buildfarm.model.settings import load_settings
from buildfarm.model.sources import pack_tree
from buildfarm.runners.outputs import unpack_outputs
from buildfarm.runners.sbuild import ensure_builder_tarball

from debpkgs import build_deb, make_package
from helpers import free_port
from s3kit import ACCESS_KEY, REGION, SECRET_KEY, MotoS3, running_moto_s3

REPO = Path(__file__).parents[3]
ENTRYPOINT = REPO / "buildtools" / "builder" / "buildfarm-step"
STEP_TIMEOUT = 600.0
"""Seconds for one entrypoint run (the first installs debhelper and gcc's friends: ~10-20 s here)."""
pytestmark = pytest.mark.sbuild


@pytest.fixture(scope="module")
def chroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The builder tarball unpacked once, with the entrypoint where the image installs it."""
    settings = load_settings(state_dir=tmp_path_factory.mktemp("unused"))
    tarball = ensure_builder_tarball(
        settings.buildenv.tarball, settings.buildenv.distribution, settings.buildenv.mirror
    )
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="buildfarm-builder-", dir=shm if os.access(shm, os.W_OK) else None))
    try:
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True, capture_output=True)
        shutil.copy2(ENTRYPOINT, root / "usr" / "local" / "bin" / "buildfarm-step")
        shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")  # the network is the host's
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with running_moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def store(moto: MotoS3) -> S3ArtifactStore:
    return S3ArtifactStore(
        moto.endpoint, ACCESS_KEY, SECRET_KEY, moto.new_bucket(), secure=False, region=REGION
    )


CHROOT_SETUP = (
    'mount --rbind /dev "$1/dev" && mount -t proc proc "$1/proc" && r="$1" && shift && exec chroot "$r" "$@"'
)
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


def chroot_command(root: Path, *command: str, kill_child: str = "SIGKILL") -> list[str]:
    """``command`` in the chroot with its own mount and pid namespaces (it is PID 1, as in a pod)."""
    if os.geteuid() != 0:
        pytest.fail("these tests chroot into the builder environment: run them as root", pytrace=False)
    namespaces = ["unshare", "--mount", "--pid", "--fork", f"--kill-child={kill_child}"]
    return [*namespaces, "sh", "-euc", CHROOT_SETUP, "sh", str(root), *command]


def in_chroot(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        chroot_command(root, *command),
        check=False,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        env=CHROOT_ENV,
    )


def run_step(root: Path, workdir: str, *args: str) -> subprocess.CompletedProcess[str]:
    return in_chroot(root, "buildfarm-step", "package", "--workdir", workdir, *args)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("buildfarm-step: error:")
    ]


class Step:
    """One step's URLs: its source stored by content and a fresh upload slot."""

    def __init__(self, store: S3ArtifactStore, source: bytes, slot: str) -> None:
        self.store, self.slot = store, slot
        self.sha256 = store.put_bytes(source).sha256
        self.source_url = store.presigned_url(self.sha256)
        self.upload_url = store.presigned_put_url(slot)

    def args(self, *, sha256: str | None = None, upload_url: str | None = None) -> list[str]:
        return [
            "--source-url",
            self.source_url,
            "--source-sha256",
            sha256 or self.sha256,
            "--upload-url",
            upload_url or self.upload_url,
        ]

    def outputs(self, tmp_path: Path) -> tuple[bool, str | None, dict[str, bytes]]:
        archive = tmp_path / "uploaded.tar.gz"
        self.store.fetch_key(self.slot, archive)
        result = unpack_outputs(archive, tmp_path / "outputs")
        return result.ok, result.error, {p.name: p.read_bytes() for p in result.files}


def test_builds_the_example_and_uploads_identical_outputs(
    chroot: Path, store: S3ArtifactStore, tmp_path: Path
) -> None:
    step = Step(
        store, pack_tree(REPO / "examples" / "hello-standalone"), "uploads/1/hello-standalone/1.tar.gz"
    )
    proc = run_step(chroot, "/build/hello", *step.args())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert f"source sha256 {step.sha256} verified" in proc.stdout
    assert "X-Amz-Signature" not in proc.stdout + proc.stderr  # presigned URLs are secrets: never logged
    ok, error, outputs = step.outputs(tmp_path)
    assert (ok, error) == (True, None)
    assert {"hello-standalone_1.0_amd64.deb", "hello-standalone_1.0_amd64.buildinfo"} <= set(outputs)
    # What the worker stores is byte for byte what the build wrote in the pod.
    built = chroot / "build" / "hello"
    assert outputs == {name: (built / name).read_bytes() for name in outputs}
    # A reference build: plain dpkg-buildpackage of the same tree in the same environment. The
    # build is reproducible (SOURCE_DATE_EPOCH from the changelog, dpkg's fixfilepath), so the
    # .debs are identical bytes; .buildinfo differs by design (Build-Date, Build-Path).
    reference = in_chroot(
        chroot,
        "sh",
        "-euc",
        "mkdir -p /build/ref0/src && tar -xzf /build/hello/source.tar.gz -C /build/ref0/src"
        " && cd /build/ref0/src && dpkg-buildpackage -b -uc -us",
    )
    assert reference.returncode == 0, reference.stdout[-2000:]
    debs = sorted(name for name in outputs if name.endswith(".deb"))
    assert debs == sorted(p.name for p in (chroot / "build" / "ref0").glob("*.deb"))
    for name in debs:
        assert outputs[name] == (chroot / "build" / "ref0" / name).read_bytes(), f"{name} differs"


@pytest.fixture
def apt_repo(tmp_path: Path) -> Iterator[str]:
    """A flat apt repository on localhost holding farm-tool, served over HTTP."""
    repo = tmp_path / "repo"
    repo.mkdir()
    build_deb(repo, "farm-tool", "2.5", payload="farm-tool was installed from the local repository\n")
    packages = subprocess.run(
        ["apt-ftparchive", "packages", "."], cwd=repo, check=True, capture_output=True
    ).stdout
    (repo / "Packages").write_bytes(packages)
    handler = functools.partial(_QuietHandler, directory=str(repo))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"deb [trusted=yes] http://127.0.0.1:{server.server_port}/ ./"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_build_depends_come_from_the_given_apt_source(
    chroot: Path, store: S3ArtifactStore, apt_repo: str, tmp_path: Path
) -> None:
    tree = make_package(tmp_path, "needs-tool", build="cat /usr/share/farm-tool/payload")
    control = tree / "debian" / "control"
    control.write_text(
        control.read_text().replace("Build-Depends: dpkg-dev", "Build-Depends: farm-tool (>= 2.5)")
    )
    step = Step(store, pack_tree(tree), "uploads/2/needs-tool/1.tar.gz")
    proc = run_step(chroot, "/build/needs-tool", *step.args(), "--apt-source", apt_repo)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert f"apt source: {apt_repo}" in proc.stdout
    assert "Setting up farm-tool (2.5)" in proc.stdout
    assert "farm-tool was installed from the local repository" in proc.stdout  # the build used it
    ok, _, outputs = step.outputs(tmp_path)
    assert ok and "needs-tool_1.0_all.deb" in outputs


def test_source_with_the_wrong_hash_is_not_built(
    chroot: Path, store: S3ArtifactStore, tmp_path: Path
) -> None:
    step = Step(store, pack_tree(make_package(tmp_path, "tampered")), "uploads/3/tampered/1.tar.gz")
    expected = hashlib.sha256(b"what the planner hashed").hexdigest()
    proc = run_step(chroot, "/build/tampered", *step.args(sha256=expected))
    assert proc.returncode == 2
    assert error_lines(proc) == [
        f"buildfarm-step: error: source sha256 mismatch: expected {expected}, "
        f"the download has {step.sha256}; nothing built"
    ]
    assert "Traceback" not in proc.stderr and "apt-get" not in proc.stdout
    assert not (chroot / "build" / "tampered" / "src").exists()  # not even unpacked
    ok, error, outputs = step.outputs(tmp_path)  # the worker still learns why
    assert not ok and outputs == {} and error is not None and "sha256 mismatch" in error


def test_unsafe_source_tarball_is_refused(chroot: Path, store: S3ArtifactStore, tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/cron.d/evil")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    step = Step(store, gzip.compress(raw.getvalue()), "uploads/4/evil/1.tar.gz")
    proc = run_step(chroot, "/build/evil", *step.args())
    assert proc.returncode == 2
    assert error_lines(proc) == [
        "buildfarm-step: error: unsafe source tarball: member '../../etc/cron.d/evil' escapes the tree"
    ]
    assert not (chroot / "etc" / "cron.d" / "evil").exists()


@pytest.mark.parametrize("target", ["closed-port", "missing-bucket"])
def test_failed_upload_exits_3(chroot: Path, store: S3ArtifactStore, tmp_path: Path, target: str) -> None:
    step = Step(store, pack_tree(make_package(tmp_path, "unsent")), f"uploads/5/{target}/1.tar.gz")
    if target == "closed-port":
        url = f"http://127.0.0.1:{free_port()}/bucket/uploads/5/unsent/1.tar.gz"
        reason = "after 3 attempt(s): [Errno 111] Connection refused"
    else:  # S3 answers 404 NoSuchBucket: not worth retrying
        url = step.upload_url.replace(f"/{store.bucket}/", "/no-such-bucket/")
        reason = "after 1 attempt(s): HTTP 404"
    proc = run_step(chroot, f"/build/{target}", *step.args(upload_url=url))
    assert proc.returncode == 3, proc.stdout[-3000:]
    assert "dpkg-deb: building package 'unsent'" in proc.stdout  # it did build
    [line] = error_lines(proc)
    assert line.startswith(f"buildfarm-step: error: upload to {url.split('?')[0]} failed {reason}")
    with pytest.raises(NotFoundError, match="nothing was uploaded"):
        store.fetch_key(step.slot, tmp_path / "none.tar.gz")


def test_failing_build_uploads_its_error(chroot: Path, store: S3ArtifactStore, tmp_path: Path) -> None:
    tree = make_package(tmp_path, "broken", build="echo 'broken.c:1: error: no' >&2; exit 3")
    step = Step(store, pack_tree(tree), "uploads/6/broken/1.tar.gz")
    proc = run_step(chroot, "/build/broken", *step.args())
    assert proc.returncode == 1
    assert "broken.c:1: error: no" in proc.stdout  # the build's own output is in the step log
    ok, error, outputs = step.outputs(tmp_path)
    assert (ok, outputs) == (False, {})
    assert error is not None
    assert error.startswith("dpkg-buildpackage exited with status 2: dpkg-buildpackage: error: debian/rules ")
    assert error.endswith(" subprocess returned exit status 2")
    assert error_lines(proc) == [f"buildfarm-step: error: {error}"]


def test_upload_slot_keys(store: S3ArtifactStore, tmp_path: Path) -> None:
    key = "uploads/7/slot/1.tar.gz"
    store.put_object_bytes(key, b"archive bytes")
    store.fetch_key(key, tmp_path / "a")
    assert (tmp_path / "a").read_bytes() == b"archive bytes"
    with pytest.raises(PermanentError, match="is 13 bytes, more than the 4 allowed"):
        store.fetch_key(key, tmp_path / "b", max_bytes=4)
    store.delete_key(key)
    store.delete_key(key)  # already gone: not an error
    with pytest.raises(NotFoundError):
        store.fetch_key(key, tmp_path / "c")
    for bad in ("sha256/ab/cd", "uploads", "uploads/../builds/1/manifest.json", "uploads/a//b", "uploads/.x"):
        with pytest.raises(PermanentError, match="invalid upload key"):
            store.presigned_put_url(bad)
    with pytest.raises(PermanentError, match="invalid log key"):
        store.open_log("uploads/7/slot/1.tar.gz")


def test_sigterm_stops_the_build_and_reports_it(chroot: Path, store: S3ArtifactStore, tmp_path: Path) -> None:
    """A deleted pod's PID 1 gets SIGTERM: the build's processes stop and the error is uploaded."""
    tree = make_package(tmp_path, "endless", build="echo endless build started; sleep 600")
    step = Step(store, pack_tree(tree), "uploads/8/endless/1.tar.gz")
    # unshare --fork ignores SIGTERM itself; killed, its --kill-child sends SIGTERM to its child,
    # the entrypoint, which is PID 1 of the namespace as in a pod (so it only sees a handled signal).
    command = chroot_command(
        chroot, "buildfarm-step", "package", "--workdir", "/build/endless", *step.args(), kill_child="SIGTERM"
    )
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=CHROOT_ENV
    )
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        before = []
        for line in proc.stdout:  # bounded by the watchdog
            before.append(line)
            if line.strip() == "endless build started":
                break
        assert before and before[-1].strip() == "endless build started", "".join(before)[-3000:]
        proc.kill()
        after = proc.stdout.read()  # EOF once the entrypoint and everything it started are gone
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert "buildfarm-step: error: stopped by SIGTERM (the pod was deleted or the build cancelled)" in after
    assert "buildfarm-step: uploaded 0 output(s)" in after
    ok, error, _ = step.outputs(tmp_path)
    assert not ok and error is not None and error.startswith("stopped by SIGTERM")


def test_time_limit_stops_the_build(chroot: Path, store: S3ArtifactStore, tmp_path: Path) -> None:
    tree = make_package(tmp_path, "slow", build="sleep 600")
    step = Step(store, pack_tree(tree), "uploads/9/slow/1.tar.gz")
    proc = run_step(chroot, "/build/slow", *step.args(), "--timeout", "10")
    assert proc.returncode == 1, proc.stdout[-3000:]
    ok, error, _ = step.outputs(tmp_path)
    # Which command the limit catches depends on the machine's speed (apt-get or the build).
    assert not ok and error is not None and "the 10 s step time limit" in error
    assert error_lines(proc) == [f"buildfarm-step: error: {error}"]


# -- fetch-context: the kaniko pod's init container ------------------------------------------
# A plain host run is enough here: the mode only downloads, hashes and unpacks into --dest (no
# apt, no build, nothing outside that directory), with the same code the chroot runs above.


def fetch_context(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["python3", str(ENTRYPOINT), "fetch-context", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=CHROOT_ENV,
    )


def _context_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "context-tree"
    (tree / "files").mkdir(parents=True)
    (tree / "Dockerfile").write_text("FROM scratch\nCOPY files /\n")
    (tree / "files" / "greeting").write_text("hello\n")
    (tree / "files" / "link").symlink_to("greeting")
    return tree


@pytest.mark.parametrize("case", ["ok", "mismatch", "unsafe", "no-dockerfile"])
def test_fetch_context_checks_before_it_unpacks(store: S3ArtifactStore, tmp_path: Path, case: str) -> None:
    tree = _context_tree(tmp_path)
    data = pack_tree(tree)
    if case == "unsafe":
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        data = gzip.compress(raw.getvalue())
    sha256 = store.put_bytes(data).sha256
    url = store.presigned_url(sha256)
    assert url.startswith("http://")  # moto is plain HTTP, as the chart's in-cluster MinIO
    expected = hashlib.sha256(b"what the planner hashed").hexdigest() if case == "mismatch" else sha256
    dockerfile = "Containerfile" if case == "no-dockerfile" else "Dockerfile"
    dest, message = tmp_path / "workspace" / "context", tmp_path / "termination-log"
    dest.parent.mkdir()
    proc = fetch_context(
        "--url", url, "--sha256", expected, "--dest", str(dest),
        "--dockerfile", dockerfile, "--termination-log", str(message),
    )  # fmt: skip
    assert "X-Amz-Signature" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # no tarball left, and on failure no half-unpacked context either
    assert list(dest.parent.iterdir()) == ([dest] if case == "ok" else [])
    if case == "ok":
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"image context sha256 {sha256} verified" in proc.stdout
        assert (dest / "Dockerfile").read_bytes() == (tree / "Dockerfile").read_bytes()
        assert (dest / "files" / "greeting").read_text() == "hello\n"
        assert os.readlink(dest / "files" / "link") == "greeting"
        assert not message.exists() and error_lines(proc) == []
        return
    errors = {
        "mismatch": f"image context sha256 mismatch: expected {expected}, the download from "
        f"{url.split('?')[0]} has {sha256}; nothing built",
        "unsafe": "unsafe image context: symlink Dockerfile -> /etc/passwd points outside the tree",
        "no-dockerfile": "the image context has no Containerfile at its top",
    }
    assert proc.returncode == 2
    assert error_lines(proc) == [f"buildfarm-step: error: {errors[case]}"]
    assert message.read_text() == errors[case] + "\n"  # the pod's termination message: the step's error


def test_fetch_context_argument_mistakes_are_one_line(tmp_path: Path) -> None:
    good = ["--url", "http://127.0.0.1:9/c.tar.gz", "--sha256", "a" * 64, "--dest", str(tmp_path / "ctx")]
    for args, error in [
        ([*good[:3], "ABC", *good[4:]], "--sha256 must be 64 lower-case hex digits, not 'ABC'"),
        (
            ["--url", "file:///etc/passwd", *good[2:]],
            "--url must be an http(s) URL, not 'file:///etc/passwd'",
        ),
        (
            [*good[:5], str(tmp_path)],
            f"--dest {tmp_path} exists already: the context goes into a new directory",
        ),
    ]:
        proc = fetch_context(*args)
        assert proc.returncode == 2 and error_lines(proc) == [f"buildfarm-step: error: {error}"]
