"""Session fixtures that start private Redis and PostgreSQL servers for the tests.

Each test session gets its own servers on free ports with their data in temporary directories,
never the machine's already-running ones: tests cannot share state with anything else, and they
pass on a machine where no such service runs. A missing binary fails the tests that need it with
the name of the Debian package to install (``make deps`` installs them all); nothing is skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis

from buildfarm.local.procs import redis_server_command

from helpers import free_port, tail, wait_until

SHARED_GROUPS = {
    "pulp": ("pulp_server",),  # one real Pulp stack per session: every module using it on one worker
    "buildah": ("buildah",),  # buildah's storage under the cache dir is shared by these modules
}
"""Test modules that must share one pytest-xdist worker, found by what their source mentions."""


def _group_of(module: Path, cache: dict[Path, str]) -> str:
    if module not in cache:
        text = module.read_text(encoding="utf-8") if module.suffix == ".py" else ""
        cache[module] = next(
            (group for group, words in SHARED_GROUPS.items() if any(w in text for w in words)),
            module.name,
        )
    return cache[module]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marks into groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--dist loadgroup``: one module's tests stay on one worker (module fixtures start once),
    and modules sharing a session server share a worker (the server starts once)."""
    cache: dict[Path, str] = {}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group_of(Path(str(item.path)), cache)))


# Seconds. Both servers are up in well under a second here; the margin is for a loaded CI machine.
REDIS_START_TIMEOUT = 15.0
POSTGRES_START_TIMEOUT = 30
# Another process can take a "free" port before the server binds it: retry with a new one.
START_ATTEMPTS = 3
POSTGRES_DATABASE = "buildfarm_test"


def _require_executable(path: str | Path, package: str) -> str:
    found = shutil.which(str(path))
    if found is None:
        pytest.fail(
            f"{path} not found: install the Debian package '{package}' (make deps does)", pytrace=False
        )
    return found


def _stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a private, non-persistent redis-server for this session."""
    binary = _require_executable("redis-server", "redis-server")
    workdir = tmp_path_factory.mktemp("redis")
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        log_path = workdir / f"redis-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                redis_server_command(port, workdir, binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        try:
            wait_until(
                lambda: proc.poll() is not None or _redis_answers(url),  # noqa: B023
                REDIS_START_TIMEOUT,
                f"redis-server to answer PING on port {port}",
            )
        except TimeoutError as exc:
            _stop_process(proc)
            pytest.fail(f"{exc}\n{tail(log_path)}", pytrace=False)
        if proc.poll() is None:
            break
        _stop_process(proc)
        if "Address already in use" not in tail(log_path) or attempt == START_ATTEMPTS:
            pytest.fail(f"redis-server exited at start (port {port}):\n{tail(log_path)}", pytrace=False)
    try:
        yield url
    finally:
        _stop_process(proc)


@pytest.fixture
def redis_flush(redis_url: str) -> str:
    """The private redis, emptied (FLUSHALL) before the test; returns its URL."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_url


def _postgres_bindir() -> Path:
    """The newest installed PostgreSQL server's bin directory (Debian: /usr/lib/postgresql/<v>/bin)."""

    def version(initdb: Path) -> tuple[int, ...]:
        name = initdb.parent.parent.name
        return tuple(int(part) for part in name.split(".")) if name.replace(".", "").isdigit() else (0,)

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if not candidates:
        pytest.fail(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: install the Debian package "
            "'postgresql' (make deps does)",
            pytrace=False,
        )
    return candidates[-1].parent


@dataclass
class _PostgresRunner:
    """Runs the server-side PostgreSQL tools, as the 'postgres' user when we are root.

    initdb and postgres refuse to run as root, and CI runs as root.
    """

    bindir: Path
    workdir: Path
    as_user: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, bindir: Path) -> _PostgresRunner:
        workdir = Path(tempfile.mkdtemp(prefix="bf-pg-"))
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(workdir)
                pytest.fail(
                    "running as root, PostgreSQL needs the 'postgres' user to run as: install the "
                    "Debian package 'postgresql' (it creates that user)",
                    pytrace=False,
                )
            os.chown(workdir, account.pw_uid, account.pw_gid)
            as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        return cls(bindir=bindir, workdir=workdir, as_user=as_user)

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / tool), *args],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **self.as_user,
        )

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("pg_ctl", "-D", str(self.datadir), *args, timeout=POSTGRES_START_TIMEOUT + 15)


def _fail_with(what: str, result: subprocess.CompletedProcess[str], log: str = "") -> NoReturn:
    output = f"{result.stdout}{result.stderr}{log}"
    pytest.fail(f"{what} failed (exit {result.returncode}):\n{output}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a database on a private PostgreSQL server for this session.

    ``postgresql+psycopg://postgres@127.0.0.1:<port>/buildfarm_test``, trust authentication.
    Durability is off (fsync, full_page_writes, synchronous_commit): the data dies with the session.
    """
    bindir = _postgres_bindir()
    for tool in ("initdb", "pg_ctl", "createdb"):
        _require_executable(bindir / tool, "postgresql")
    pg = _PostgresRunner.create(bindir)
    try:
        result = pg.run(
            "initdb",
            "-D",
            str(pg.datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        if result.returncode != 0:
            _fail_with("initdb", result)
        with (pg.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# private test server (tests/conftest.py)\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{pg.workdir}'\n"
                "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n"
            )
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            result = pg.pg_ctl(
                "-l", str(pg.log_path), "-w", "-t", str(POSTGRES_START_TIMEOUT), "-o", f"-p {port}", "start"
            )
            if result.returncode == 0:
                break
            log = tail(pg.log_path)
            if "could not bind" not in log or attempt == START_ATTEMPTS:
                _fail_with(f"pg_ctl start (port {port})", result, log)
        result = pg.run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", POSTGRES_DATABASE)
        if result.returncode != 0:
            _fail_with("createdb", result)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{POSTGRES_DATABASE}"
    finally:
        # Also after a failed or timed-out start: a half-started server must not outlive the tests.
        if (pg.datadir / "postmaster.pid").exists():
            pg.pg_ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(pg.workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _umask_restored() -> Iterator[None]:
    """The local CLI sets its process's umask to 077 (a private state dir); a test calling it
    in-process must not change the umask of every later test on the same worker."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)
