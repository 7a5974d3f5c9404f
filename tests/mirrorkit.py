"""A signed 3rd-party APT repository on localhost, as the farm's mirrors see one.

``Upstream`` is a small APT repository (``dists/<suite>/main/binary-<arch>`` indexed by Debian's
apt-ftparchive, real .debs) signed (InRelease and Release.gpg) with a throwaway key made in a temp
GNUPGHOME (``signing_keys``), served over HTTP on 127.0.0.1 by a thread (``served_upstream``).
A test can close its ``gate`` to hold a reader (Pulp's sync) mid-request, and read in ``requests``
how often each path was asked for (the package cache's test). ``mirror_of`` is the
farm's mirror configuration naming it. Shared by the Pulp mirror tests and the sbuild build that
takes a build-dependency from a signed mirror.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import subprocess
import tempfile
import threading
import typing as t
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from buildfarm.backends.base import PackageFile
from buildfarm.model.settings import MirrorConfig

SUITE = "tpsuite"
COMPONENT = "main"
GATE_SECONDS = 60
"""How long a request waits for a closed gate before it is served anyway."""


def _host_architecture() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()


ARCH = _host_architecture()


class _GatedHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files once ``gate`` is open (a test closes it to hold a sync inside Pulp), counting
    the requests of each path in ``requests``."""

    def __init__(self, *args: t.Any, gate: threading.Event, requests: Counter[str], **kwargs: t.Any) -> None:
        self.gate = gate
        self.requests = requests
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.requests[urllib.parse.unquote(self.path)] += 1
        self.gate.wait(GATE_SECONDS)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        return None


def _gpg(home: Path, *args: str) -> bytes:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--quiet", *args], check=True, capture_output=True
    ).stdout


@dataclass
class SigningKey:
    """A throwaway OpenPGP key: its private half in ``home``, its public half in ``public``."""

    home: Path
    public: Path

    @classmethod
    def make(cls, home: Path, uid: str) -> SigningKey:
        home.mkdir(mode=0o700)
        _gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
        public = home / "public.asc"
        public.write_bytes(_gpg(home, "--armor", "--export", uid))
        return cls(home, public)


@contextmanager
def signing_keys(*uids: str) -> Iterator[list[SigningKey]]:
    """One throwaway key per uid; their gpg-agents are stopped and their homes removed after.

    The homes live under a short temp path, not pytest's: gpg-agent's socket lives in the home and
    a Unix socket path is limited to 108 bytes.
    """
    top = Path(tempfile.mkdtemp(prefix="bf-gpg-"))
    homes = [top / str(index) for index in range(len(uids))]
    try:
        yield [SigningKey.make(home, uid) for home, uid in zip(homes, uids, strict=True)]
    finally:
        for home in homes:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
        shutil.rmtree(top, ignore_errors=True)


@dataclass
class Upstream:
    """A 3rd-party APT repository on localhost: ``root`` served at ``url``, signed by ``key``."""

    root: Path
    url: str
    debs: dict[str, PackageFile]
    key: SigningKey
    gate: threading.Event
    requests: Counter[str]
    """GET requests served, by decoded path (``/<prefix>/pool/main/<file>.deb``)."""

    def add(self, deb: PackageFile) -> None:
        """Add a package and rewrite the indexes (Packages first, then Release, as archives do)."""
        pool = self.root / "pool" / COMPONENT
        shutil.copyfile(deb.path, pool / deb.filename)
        self.debs[deb.filename] = deb
        self._index()

    def _index(self) -> None:
        def ftparchive(*args: str) -> bytes:
            return subprocess.run(
                ["apt-ftparchive", *args], cwd=self.root, check=True, capture_output=True
            ).stdout

        dist = self.root / "dists" / SUITE
        binary = dist / COMPONENT / f"binary-{ARCH}"
        binary.mkdir(parents=True, exist_ok=True)
        packages = ftparchive("packages", f"pool/{COMPONENT}")
        (binary / "Packages").write_bytes(packages)
        (binary / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
        options = {"Suite": SUITE, "Codename": SUITE, "Components": COMPONENT, "Architectures": ARCH}
        args = [x for k, v in options.items() for x in ("-o", f"APT::FTPArchive::Release::{k}={v}")]
        release = ftparchive(*args, "release", f"dists/{SUITE}")
        (dist / "Release").write_bytes(release)
        for name, how in (("InRelease", "--clearsign"), ("Release.gpg", "--detach-sign")):
            _gpg(self.key.home, "--yes", "--armor", how, "--output", str(dist / name), str(dist / "Release"))

    def tamper(self) -> None:
        """Change the Release text (both copies) without signing it again."""
        for name in ("Release", "InRelease"):
            path = self.root / "dists" / SUITE / name
            path.write_bytes(path.read_bytes().replace(f"Codename: {SUITE}".encode(), b"Codename: evil"))


@contextmanager
def served_upstream(root: Path, key: SigningKey, prefix: str = "") -> Iterator[Upstream]:
    """An empty upstream in ``root`` (no packages yet: ``add`` them) served on 127.0.0.1, its
    gate open; at ``/<prefix>/`` when one is given (a mirror URL is rarely the server's root)."""
    (root / "pool" / COMPONENT).mkdir(parents=True)
    gate = threading.Event()
    gate.set()
    requests: Counter[str] = Counter()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0),
        functools.partial(_GatedHandler, gate=gate, requests=requests, directory=str(root)),
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    if prefix:
        (root / prefix).symlink_to(".")
        url = f"{url}/{prefix}"
    try:
        yield Upstream(root, url, {}, key, gate, requests)
    finally:
        gate.set()
        server.shutdown()
        server.server_close()


def mirror_of(upstream: Upstream, name: str = "thirdparty", signed_by: Path | None = None) -> MirrorConfig:
    """The farm's configuration of a mirror of ``upstream`` (checked with ``signed_by`` if given)."""
    return MirrorConfig(
        name=name,
        url=upstream.url,
        distribution=SUITE,
        components=[COMPONENT],
        architectures=[ARCH],
        signed_by=str(signed_by) if signed_by else None,
    )
