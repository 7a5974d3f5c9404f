"""Run a private Pulp server (pulpcore + pulp_deb): its API, content app and one task worker.

The test fixtures (tests/pulpkit.py) and `make demo PROFILE=pulp` start Pulp the
same way, through this file: every path Pulp writes lives under one directory, the database is
one of our own on a PostgreSQL server we name, and nothing of /etc/pulp or /var/lib/pulp is read
or written.  The server itself runs from .venv-pulp (ops/pulp/install.sh), never from the farm's
.venv: Pulp's pins would move the farm's own dependencies.  Only the standard library is used
here, so any python3 can drive it.

    python3 ops/pulp/pulpstack.py start --dir /tmp/pulp --db-port 5432 [--api-port P --content-port Q]
                                        [--signing-key-file KEY.asc]
    python3 ops/pulp/pulpstack.py stop --dir /tmp/pulp

``start`` prints one JSON line (base_url, content_origin, username, password, signing_service)
once the status endpoint reports the worker and the content app online, and leaves the processes
running with their pids in ``<dir>/pids``; ``stop`` ends exactly those processes.

With a signing key (an armored OpenPGP secret key without passphrase), ``prepare`` imports it
into ``<dir>/signing/gnupg`` (0700), copies beside it the signing script pulp_deb runs for
every Release file (``InRelease`` and ``Release.gpg``; buildtools/images/pulp/sign-release.sh,
which the chart's Pulp image ships too) and registers it as the AptReleaseSigningService
``buildfarm`` (the farm's ``pulp_signing_service``).  A stack keeps the service it registered
first: to change the key, ``pulpcore-manager remove-signing-service buildfarm`` and start again.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_VENV = REPO_ROOT / ".venv-pulp"
INSTALL_SCRIPT = HERE / "install.sh"

ADMIN_USER = "admin"
INSTALL_TIMEOUT_SECONDS = 600.0
"""Bound on ops/pulp/install.sh: ~30 s measured, minutes on a slow mirror."""
MIGRATE_TIMEOUT_SECONDS = 300.0
"""Bound on `pulpcore-manager migrate` of an empty database (~15 s measured)."""
READY_TIMEOUT_SECONDS = 60.0
"""Bound on the API answering with a worker and a content app online (~3 s measured)."""
STOP_GRACE_SECONDS = 10.0
"""How long each process gets after SIGTERM before SIGKILL."""
START_ATTEMPTS = 3
"""A port that was free when picked can be taken before gunicorn binds it: retry with new ports."""
SIGNING_SERVICE = "buildfarm"
"""Name of the AptReleaseSigningService a stack with a signing key registers."""
GPG_TIMEOUT_SECONDS = 60.0
"""Bound on one gpg run at setup (importing a key takes milliseconds)."""
SIGNING_SCRIPT = REPO_ROOT / "buildtools" / "images" / "pulp" / "sign-release.sh"
"""pulp_deb's signing script, the one the chart's Pulp image ships: a stack runs a copy of it
beside its GNUPGHOME (the script's default home is ``gnupg/`` next to itself)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


class PulpStackError(RuntimeError):
    """The stack could not be installed, prepared or started; the message says which step and why."""


def ensure_installed(venv: Path = DEFAULT_VENV) -> float:
    """Run install.sh (a no-op when ``venv`` already holds these pins); returns the seconds it took."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", str(INSTALL_SCRIPT), str(venv)],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PulpStackError(f"{INSTALL_SCRIPT} took over {INSTALL_TIMEOUT_SECONDS:.0f}s") from exc
    if done.returncode != 0:
        raise PulpStackError(
            f"{INSTALL_SCRIPT} failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return time.monotonic() - started


@dataclass
class PulpStack:
    """One Pulp server whose state lives under ``root`` and in the database ``db_name``."""

    root: Path
    db_host: str = "127.0.0.1"
    db_port: int = 5432
    db_user: str = "postgres"
    db_password: str = ""
    db_name: str = "pulp"
    venv: Path = DEFAULT_VENV
    host: str = "127.0.0.1"
    api_port: int = 0
    content_port: int = 0
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    orphan_protection_minutes: int | None = None
    """Pulp's ORPHAN_PROTECTION_TIME (None: Pulp's default, a day).  Tests set 0, so an orphan
    cleanup right after a retention sweep visibly frees storage."""
    signing_key_file: Path | None = None
    """Armored OpenPGP secret key (no passphrase): ``prepare`` registers :data:`SIGNING_SERVICE` with it."""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def content_origin(self) -> str:
        return f"http://{self.host}:{self.content_port}"

    @property
    def settings_path(self) -> Path:
        return self.root / "settings.py"

    def _bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self) -> dict[str, str]:
        # The machine's own PULP_* variables would override our settings file: drop them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULP_")}
        env.update(PULP_SETTINGS=str(self.settings_path), LC_ALL="C.UTF-8", PYTHONUNBUFFERED="1")
        return env

    # -- preparing ---------------------------------------------------------------------------

    def write_settings(self) -> None:
        """The settings file: every path under ``root``, our database, md5+sha1 for apt indexes."""
        for sub in ("media", "static", "tmp", "upload-tmp", "logs", "certs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "certs" / "database_fields.symmetric.key"
        if not key.exists():
            key.write_bytes(base64.urlsafe_b64encode(secrets.token_bytes(32)))
            key.chmod(0o600)
        secret_file = self.root / "certs" / "secret_key"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(48))
            secret_file.chmod(0o600)
        settings = {
            "SECRET_KEY": secret_file.read_text(),
            "DATABASES": {
                "default": {
                    "ENGINE": "django.db.backends.postgresql",
                    "NAME": self.db_name,
                    "USER": self.db_user,
                    "PASSWORD": self.db_password,
                    "HOST": self.db_host,
                    "PORT": str(self.db_port),
                }
            },
            "CONTENT_ORIGIN": self.content_origin,
            "DEPLOY_ROOT": str(self.root),
            "MEDIA_ROOT": str(self.root / "media"),
            "STATIC_ROOT": str(self.root / "static"),
            "WORKING_DIRECTORY": str(self.root / "tmp"),
            "FILE_UPLOAD_TEMP_DIR": str(self.root / "upload-tmp"),
            "DB_ENCRYPTION_KEY": str(key),
            "STORAGES": {
                "default": {
                    "BACKEND": "pulpcore.app.models.storage.FileSystem",
                    "OPTIONS": {"location": str(self.root / "media")},
                },
                "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
            },
            # apt's Release files carry MD5Sum and SHA1 fields: pulp_deb needs both hashes.
            "ALLOWED_CONTENT_CHECKSUMS": ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"],
            # Django hashes the password of every Basic-auth request with PBKDF2 (~0.2 s of CPU
            # each, measured); this throwaway server's admin password is 128 random bits, so the
            # cheap hasher Django recommends for tests loses nothing and keeps requests at ~10 ms.
            "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],
            "ANALYTICS": False,
            "CACHE_ENABLED": False,
            "ALLOWED_IMPORT_PATHS": [],
            "ALLOWED_EXPORT_PATHS": [],
        }
        if self.orphan_protection_minutes is not None:
            settings["ORPHAN_PROTECTION_TIME"] = self.orphan_protection_minutes
        lines = ["# Written by ops/pulp/pulpstack.py; rewritten at every start.\n"]
        lines += [f"{name} = {value!r}\n" for name, value in settings.items()]
        self.settings_path.write_text("".join(lines))
        self.settings_path.chmod(0o600)

    def _run(self, what: str, args: list[str], timeout: float) -> str:
        try:
            done = subprocess.run(
                args,
                env=self.env(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PulpStackError(f"{what} took over {timeout:.0f}s") from exc
        if done.returncode != 0:
            raise PulpStackError(
                f"{what} failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        return done.stdout

    def ensure_database(self) -> None:
        """Create the database unless it exists (psycopg of .venv-pulp: the farm's venv is not needed)."""
        script = (
            "import sys, psycopg\n"
            "from psycopg import sql\n"
            "host, port, user, password, name = sys.argv[1:]\n"
            "with psycopg.connect(host=host, port=int(port), user=user, password=password or None,\n"
            "                     dbname='postgres', autocommit=True, connect_timeout=10) as conn:\n"
            "    found = conn.execute('SELECT 1 FROM pg_database WHERE datname = %s', (name,)).fetchone()\n"
            "    if not found:\n"
            "        conn.execute(sql.SQL('CREATE DATABASE {}').format(sql.Identifier(name)))\n"
        )
        self._run(
            f"creating database {self.db_name} on {self.db_host}:{self.db_port}",
            [
                self._bin("python"),
                "-c",
                script,
                self.db_host,
                str(self.db_port),
                self.db_user,
                self.db_password,
                self.db_name,
            ],
            timeout=60,
        )

    def prepare(self) -> None:
        """Settings, database, schema and the admin password; safe to repeat."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_settings()
        self.ensure_database()
        self._run(
            "pulpcore-manager migrate",
            [self._bin("pulpcore-manager"), "migrate", "--noinput"],
            MIGRATE_TIMEOUT_SECONDS,
        )
        self._run(
            "pulpcore-manager reset-admin-password",
            # "--password=X": token_urlsafe may start with "-", which argparse reads as an option.
            [self._bin("pulpcore-manager"), "reset-admin-password", f"--password={self.password}"],
            timeout=120,
        )
        if self.signing_key_file is not None:
            self.register_signing_service(self.signing_key_file)

    # -- signing -----------------------------------------------------------------------------

    @property
    def signing_home(self) -> Path:
        return self.root / "signing" / "gnupg"

    def _gpg(self, *args: str) -> str:
        return self._run(
            f"gpg {args[0]}",
            ["gpg", "--homedir", str(self.signing_home), "--batch", "--no-tty", *args],
            timeout=GPG_TIMEOUT_SECONDS,
        )

    def register_signing_service(self, key_file: Path) -> None:
        """Import ``key_file``, write the signing script and register :data:`SIGNING_SERVICE`; a
        stack that has it already keeps it."""
        self.signing_home.mkdir(parents=True, exist_ok=True)
        self.signing_home.parent.chmod(0o700)
        self.signing_home.chmod(0o700)
        self._gpg("--import", str(key_file.absolute()))
        listing = self._gpg(
            "--with-colons", "--import-options", "show-only", "--import", str(key_file.absolute())
        )
        fingerprints = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
        if not fingerprints:
            raise PulpStackError(f"{key_file} holds no OpenPGP key")
        script = self.signing_home.parent / "sign-release.sh"
        shutil.copyfile(SIGNING_SCRIPT, script)
        script.chmod(0o700)
        try:
            self._run(
                f"registering the signing service {SIGNING_SERVICE}",
                [
                    self._bin("pulpcore-manager"),
                    "add-signing-service",
                    SIGNING_SERVICE,
                    str(script),
                    fingerprints[0],  # the primary key's
                    "--class",
                    "deb:AptReleaseSigningService",
                    "--home",
                    str(self.signing_home),
                ],
                timeout=120,
            )
        except PulpStackError as exc:
            # One manager run, not a lookup first (each costs seconds of Django start-up).
            if "duplicate key" not in str(exc):
                raise

    def stop_signing_agent(self) -> None:
        """End the gpg-agent that signing started for this stack's GNUPGHOME (if any)."""
        if self.signing_home.is_dir():
            subprocess.run(
                ["gpgconf", "--homedir", str(self.signing_home), "--kill", "gpg-agent"],
                capture_output=True,
                timeout=GPG_TIMEOUT_SECONDS,
                check=False,
            )

    # -- running -----------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.root / "logs" / f"{name}.log").open("ab")
        with log:
            self.processes[name] = subprocess.Popen(
                args,
                env=self.env(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends gunicorn's children too
            )
        (self.root / "pids").mkdir(exist_ok=True)
        (self.root / "pids" / name).write_text(str(self.processes[name].pid))

    def status(self) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.base_url}/pulp/api/v3/status/", timeout=2) as response:
            data: dict[str, object] = json.load(response)
            return data

    def _ready(self) -> bool:
        try:
            status = self.status()
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return bool(status.get("online_workers")) and bool(status.get("online_content_apps"))

    def start(self) -> None:
        """Start API, content app and worker; return once Pulp reports them online."""
        for attempt in range(1, START_ATTEMPTS + 1):
            self.api_port = self.api_port or free_port(self.host)
            self.content_port = self.content_port or free_port(self.host)
            self.write_settings()  # CONTENT_ORIGIN names the content port
            bind = ["-w", "1", "--no-control-socket"]
            self._spawn("api", [self._bin("pulpcore-api"), "-b", f"{self.host}:{self.api_port}", *bind])
            self._spawn(
                "content", [self._bin("pulpcore-content"), "-b", f"{self.host}:{self.content_port}", *bind]
            )
            self._spawn(
                "worker", [self._bin("pulpcore-worker"), "--name-template", "buildfarm-{pid}@{hostname}"]
            )
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                if self._ready():
                    return
                exited = [name for name, proc in self.processes.items() if proc.poll() is not None]
                if exited:
                    break
                time.sleep(0.1)
            logs = "\n".join(
                f"--- {name}.log\n{tail(self.root / 'logs' / f'{name}.log')}" for name in self.processes
            )
            self.stop()
            if "Address already in use" in logs and attempt < START_ATTEMPTS:
                self.api_port = self.content_port = 0
                continue
            what = (
                f"exited: {', '.join(exited)}" if exited else f"not ready after {READY_TIMEOUT_SECONDS:.0f}s"
            )
            raise PulpStackError(f"Pulp on {self.base_url} {what}\n{logs}")

    def stop(self) -> None:
        """End the processes this stack started (their whole process groups), then forget them."""
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()
        for pid_file in (self.root / "pids").glob("*"):
            pid_file.unlink()
        self.stop_signing_agent()


def stop_from_pid_files(root: Path) -> list[str]:
    """Stop the processes a `start` command left running (the CLI's own process is gone)."""
    stopped = []
    for pid_file in sorted((root / "pids").glob("*")):
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            stopped.append(pid_file.name)
        except ProcessLookupError:
            pass
        pid_file.unlink()
    PulpStack(root=root).stop_signing_agent()
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="install if needed, prepare and start; print one JSON line")
    start.add_argument("--dir", type=Path, required=True, help="all of Pulp's files live here")
    start.add_argument("--db-host", default="127.0.0.1")
    start.add_argument("--db-port", type=int, default=5432)
    start.add_argument("--db-user", default="postgres")
    start.add_argument("--db-password-file", type=Path)
    start.add_argument("--db-name", default="pulp")
    start.add_argument("--api-port", type=int, default=0, help="0 picks a free port")
    start.add_argument("--content-port", type=int, default=0, help="0 picks a free port")
    start.add_argument("--password-file", type=Path, help="admin password (created if missing)")
    start.add_argument(
        "--signing-key-file",
        type=Path,
        help=f"armored OpenPGP secret key: register the signing service {SIGNING_SERVICE!r} with it",
    )
    stop = sub.add_parser("stop", help="stop what `start --dir DIR` started")
    stop.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    root = args.dir.absolute()
    if args.command == "stop":
        print(f"stopped: {', '.join(stop_from_pid_files(root)) or 'nothing was running'}")
        return 0
    try:
        ensure_installed()
        password_file = args.password_file or root / "admin-password"
        root.mkdir(parents=True, exist_ok=True)
        if not password_file.exists():
            password_file.write_text(secrets.token_urlsafe(16))
            password_file.chmod(0o600)
        stack = PulpStack(
            root=root,
            db_host=args.db_host,
            db_port=args.db_port,
            db_user=args.db_user,
            db_password=args.db_password_file.read_text().strip() if args.db_password_file else "",
            db_name=args.db_name,
            api_port=args.api_port,
            content_port=args.content_port,
            password=password_file.read_text().strip(),
            signing_key_file=args.signing_key_file,
        )
        stack.prepare()
        stack.start()
    except PulpStackError as exc:
        print(f"pulpstack: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "base_url": stack.base_url,
                "content_origin": stack.content_origin,
                "username": ADMIN_USER,
                "password_file": str(password_file),
                "signing_service": SIGNING_SERVICE if args.signing_key_file else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
