"""The farm's OpenPGP key: signs the Release files the local repository publishes.

apt trusts a repository whose ``InRelease`` (clearsigned Release) or ``Release`` +
``Release.gpg`` (detached signature) verify with the key named by ``[signed-by=PATH]``.  The
key lives in an armored secret-key file (setting ``signing_key_file``, mode 0600, no
passphrase); gpg works from a private GNUPGHOME (mode 0700) into which that file is imported
once.  ``buildfarm start`` makes a farm key on first start (:func:`generate_key`), so the local
profile signs with no setup.  Pulp signs its own publications through a signing service
(ops/pulp/pulpstack.py registers one); this module is the local profile's signer.

gpg ≥ 2.1 does every secret-key operation through a gpg-agent it starts per GNUPGHOME;
:func:`stop_agent` ends it (``buildfarm stop``, test teardown).  The agent's sockets live in the
home, and a Unix socket path has at most 107 bytes: a farm whose state directory is deep (a
pytest tmp_path was enough) would fail with "No agent running".  gpg is then given a short
symlink to the home instead (:func:`_gpg_home`), which gpg does not resolve.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from buildfarm.model.errors import PermanentError, ServiceUnavailableError

GPG_TIMEOUT_SECONDS = 60.0
"""Bound on one gpg run: signing a Release file takes ~20 ms, making an ed25519 key well under a second."""
KEY_FILE_NAME = "farm-key.asc"
HOME_NAME = "gnupg"
DEFAULT_KEY_NAME = "buildfarm repository signing key"


@dataclass(frozen=True)
class SigningKey:
    """What apt users need: the public key (armored) and its fingerprint."""

    fingerprint: str
    public_key: str


SOCKET_PATH_ROOM = 80
"""Longest home gpg is given as it is: its longest socket name (``/S.gpg-agent.browser``, 20
bytes) must keep the path under the 107-byte limit of a Unix socket address, with room to spare."""


def _gpg_home(home: Path) -> Path:
    """``home``, or a short symlink to it (in the temp directory, owned by us) when the agent's
    socket paths under ``home`` would be too long."""
    absolute = home.absolute()
    if len(str(absolute)) <= SOCKET_PATH_ROOM:
        return absolute
    digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:16]
    link = Path(tempfile.gettempdir()) / f"bf-gpg-{os.getuid()}-{digest}"
    try:
        if link.is_symlink() and link.lstat().st_uid == os.getuid() and os.readlink(link) == str(absolute):
            return link
        staged = link.with_name(f"{link.name}.{os.getpid()}.{threading.get_ident()}")
        staged.unlink(missing_ok=True)
        os.symlink(absolute, staged)
        os.replace(staged, link)  # atomic: concurrent signers agree on the same link
    except OSError as exc:
        raise PermanentError(
            f"gpg home {absolute} is too deep for gpg-agent's sockets and {link} cannot point to it: "
            f"{exc.strerror}"
        ) from exc
    return link


GPG_COMMANDS = frozenset(
    {"--quick-gen-key", "--import", "--export", "--export-secret-keys", "--list-secret-keys"}
    | {"--clearsign", "--detach-sign"}
)


def _command(args: tuple[str, ...]) -> str:
    """The gpg command among ``args`` (options may come first), for error messages."""
    return next((arg for arg in args if arg in GPG_COMMANDS), args[0] if args else "")


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    exe = shutil.which("gpg")
    if exe is None:
        raise PermanentError("gpg is not installed: install the Debian package gnupg (apt-get install gnupg)")
    try:
        gpg_home = str(_gpg_home(home))
        done = subprocess.run(
            [exe, "--homedir", gpg_home, "--batch", "--no-tty", "--pinentry-mode", "error", *args],
            input=stdin,
            capture_output=True,
            timeout=GPG_TIMEOUT_SECONDS,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnavailableError(f"gpg {_command(args)} took over {GPG_TIMEOUT_SECONDS:.0f}s") from exc
    if done.returncode != 0:
        stderr = " ".join(done.stderr.decode(errors="replace").split())
        raise PermanentError(f"gpg {_command(args)} failed (home {home}): {stderr}")
    return done.stdout


def _private_home(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)  # gpg warns about (and agents refuse) a home others can read
    return home


def _secret_fingerprints(key_file: Path, home: Path) -> list[str]:
    """Fingerprints of the primary secret keys in an armored key file (read, not imported)."""
    try:
        data = key_file.read_bytes()
    except OSError as exc:
        raise PermanentError(f"setting signing_key_file: cannot read {key_file}: {exc.strerror}") from exc
    listing = _gpg(home, "--with-colons", "--import-options", "show-only", "--import", stdin=data)
    records = [line.split(":") for line in listing.decode(errors="replace").splitlines()]
    fingerprints: list[str] = []
    expect_primary = False
    for fields in records:
        if fields[0] == "sec":
            expect_primary = True
        elif fields[0] == "fpr" and expect_primary:
            fingerprints.append(fields[9])
            expect_primary = False
    return fingerprints


class ReleaseSigner:
    """Signs a flat repository's ``Release`` with the key of ``key_file``; thread-safe.

    ``home`` is the private GNUPGHOME the key is imported into on first use (a directory of its
    own: never the user's ~/.gnupg).
    """

    def __init__(self, key_file: Path, home: Path) -> None:
        self.key_file = Path(key_file)
        self.home = Path(home)
        self._fingerprint: str | None = None
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """The key's fingerprint; imports the key into ``home`` the first time."""
        with self._lock:
            if self._fingerprint is None:
                _private_home(self.home)
                found = _secret_fingerprints(self.key_file, self.home)
                if len(found) != 1:
                    raise PermanentError(
                        f"setting signing_key_file: {self.key_file} holds {len(found)} secret keys, "
                        "not one (export it with gpg --armor --export-secret-keys KEYID)"
                    )
                _gpg(self.home, "--import", str(self.key_file))
                self._fingerprint = found[0]
            return self._fingerprint

    def check(self) -> None:
        """At start: one clear line if the key cannot sign (unreadable, several keys, a passphrase)."""
        fingerprint = self.fingerprint
        try:
            _gpg(self.home, "--local-user", fingerprint, "--detach-sign", "--armor", stdin=b"check\n")
        except PermanentError as exc:
            raise PermanentError(
                f"setting signing_key_file: {self.key_file} cannot sign without a passphrase ({exc})"
            ) from exc

    def signing_key(self) -> SigningKey:
        fingerprint = self.fingerprint
        public = _gpg(self.home, "--armor", "--export", fingerprint).decode()
        return SigningKey(fingerprint, public)

    def sign(self, directory: Path) -> None:
        """Write ``InRelease`` (clearsigned) and ``Release.gpg`` (detached) next to ``directory/Release``."""
        fingerprint = self.fingerprint
        release = directory / "Release"
        common = ("--local-user", fingerprint, "--digest-algo", "SHA512", "--yes")
        clearsign = (*common, "--clearsign", "--output", str(directory / "InRelease"))
        detached = (*common, "--detach-sign", "--armor", "--output", str(directory / "Release.gpg"))
        # Two gpg runs of ~20 ms, made at once (the agent serves both): a publication waits for one.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sign") as pool:
            signed = [pool.submit(_gpg, self.home, *args, str(release)) for args in (clearsign, detached)]
        for each in signed:
            each.result()


def generate_key(directory: Path, name: str = DEFAULT_KEY_NAME) -> Path:
    """Make a farm key under ``directory`` (once): ``gnupg/`` (0700) and ``farm-key.asc`` (0600).

    Returns the key file; an existing one is kept, so a farm signs with the same key across starts.
    """
    key_file = directory / KEY_FILE_NAME
    if key_file.is_file():
        return key_file
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    home = _private_home(directory / HOME_NAME)
    _gpg(
        home,
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
        "--quick-gen-key",
        name,
        "ed25519",
        "sign",
        "never",
    )
    listing = _gpg(home, "--with-colons", "--list-secret-keys").decode()
    fingerprints = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
    exported = _gpg(home, "--armor", "--export-secret-keys", fingerprints[0])  # the primary key
    tmp = key_file.with_name(f".{key_file.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(exported)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, key_file)  # a crash never leaves a half-written key file to be taken as the key
    return key_file


def signing_dir(state_dir: Path) -> Path:
    """Where a farm keeps its generated key and the GNUPGHOME its signer works from."""
    return state_dir / "signing"


def signing_home(state_dir: Path) -> Path:
    return signing_dir(state_dir) / HOME_NAME


def stop_agent(home: Path) -> None:
    """End the gpg-agent gpg started for ``home`` (nothing if none runs)."""
    exe = shutil.which("gpgconf")
    if exe is None or not home.is_dir():
        return
    gpg_home = _gpg_home(home)
    subprocess.run(
        [exe, "--homedir", str(gpg_home), "--kill", "gpg-agent"],
        capture_output=True,
        timeout=GPG_TIMEOUT_SECONDS,
        check=False,
    )
    if gpg_home.is_symlink():
        gpg_home.unlink(missing_ok=True)  # the short link is made again on the next use
